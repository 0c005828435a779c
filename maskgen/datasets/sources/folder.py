"""``folder:DIR`` (or a plain directory): ``<identity>/<image>`` files, listed as a stream.

Each directory is listed with ``os.scandir`` on bytes paths (any byte name works) into Arrow
arrays, sorted (byte order, which is code-point order for UTF-8 names), and walked in
preorder: a folder's files, then its sub-folders. Only one batch of rows is ever held as
Python objects. Linked folders are followed; a link back into its own ancestors gets a
``symlink loop`` row. Sub-folders holding ``.maskgen-output.json`` are maskgen's own outputs
and are skipped (noted and logged). Units are the root's own files plus groups of
:data:`UNIT_DIRS` top-level folders.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from maskgen.datasets.sources.base import (
    ABOVE_IDENTITY,
    AMBIGUOUS_NAME,
    BATCH_ROWS,
    HIDDEN,
    IMAGE_EXTENSIONS,
    MAX_FOLDER_DEPTH,
    NO_IDENTITY,
    NOT_REGULAR,
    OUTPUT_MARKER,
    SYMLINK_LOOP,
    TOO_DEEP,
    TOO_LARGE,
    RowBuffer,
    Source,
    SourceNotFound,
    decode_name,
    fs_path,
    read_file_range,
    register,
)

UNIT_DIRS = 512  # top-level folders per scan unit
_IMAGE_EXTS = {e.encode() for e in IMAGE_EXTENSIONS}
_MARKER = OUTPUT_MARKER.encode()
_NON_IMAGE_NOTE = "files without an image extension skipped"


@dataclass(frozen=True)
class FolderUnit:
    """Scan work: the root's own files (``top_files``) and/or these top-level folders."""

    top_files: bool
    dirs: tuple[bytes, ...] = ()


def list_dir(path: bytes) -> tuple[pa.Array, np.ndarray]:
    """The entries of a directory sorted by name (a binary Arrow array) and which of them
    are directories (links to directories included), without a Python object per entry
    beyond one chunk."""
    chunks: list[pa.Array] = []
    kinds: list[np.ndarray] = []
    names: list[bytes] = []
    dirs: list[bool] = []

    def spill() -> None:
        chunks.append(pa.array(names, pa.binary()))
        kinds.append(np.array(dirs, dtype=bool))
        names.clear()
        dirs.clear()

    with os.scandir(path) as it:
        for e in it:
            names.append(e.name)
            try:
                dirs.append(e.is_dir())
            except OSError:
                dirs.append(False)
            if len(names) >= 65536:
                spill()
    spill()
    all_names = pa.concat_arrays(chunks)
    is_dir = np.concatenate(kinds)
    order = pc.sort_indices(all_names).to_numpy()
    return all_names.take(pa.array(order)), is_dir[order]


def _slices(arr: pa.Array) -> Iterator[list[bytes]]:
    for i in range(0, len(arr), BATCH_ROWS):
        yield arr.slice(i, BATCH_ROWS).to_pylist()


@register
@dataclass(eq=False)
class FolderSource(Source):
    """Images in folders; ``identity_depth`` folder levels name the identity (0: every image
    is its own identity, e.g. FairFace)."""

    kind = "folder"
    prefixes = ("folder",)
    detect_order = 90  # any directory that no other kind claims

    identity_depth: int = 1

    @classmethod
    def from_spec(cls, rest, *, identity_depth=1, data_home=None):
        root = Path(rest).expanduser()
        if not root.is_dir():
            raise SourceNotFound(f"source folder {rest} does not exist")
        return cls(root.resolve(), identity_depth=identity_depth)

    @classmethod
    def detect(cls, path: str) -> bool:
        return os.path.isdir(os.path.expanduser(path))

    # -- scan
    def _root_b(self) -> bytes:
        if not self.root.is_dir():
            raise SourceNotFound(f"source folder {self.root} does not exist")
        return os.fsencode(self.root)

    def scan_units(self) -> list[FolderUnit]:
        names, is_dir = list_dir(self._root_b())
        units = [FolderUnit(True)] if (~is_dir).any() else []
        dirs = names.filter(pa.array(is_dir))
        for i in range(0, len(dirs), UNIT_DIRS):
            units.append(FolderUnit(False, tuple(dirs.slice(i, UNIT_DIRS).to_pylist())))
        return units

    def scan_unit(self, unit: FolderUnit) -> Iterator[pa.RecordBatch]:
        root_b = self._root_b()
        buf = RowBuffer(self.kind)
        ancestors = frozenset({_dir_id(root_b)})
        if unit.top_files:
            names, is_dir = list_dir(root_b)
            yield from self._files(buf, root_b, (), names.filter(pa.array(~is_dir)))
        for name in unit.dirs:
            yield from self._subdir(buf, root_b, (), name, ancestors)
        last = buf.flush()
        if last is not None:
            yield last

    def _subdir(self, buf, parent_b, rel, name, ancestors) -> Iterator[pa.RecordBatch]:
        path_b = os.path.join(parent_b, name)
        text, escaped = decode_name(name)
        rel = (*rel, text)
        if escaped and os.path.lexists(os.path.join(parent_b, text.encode("utf-8"))):
            yield from _emit(buf, self._row(rel, None, AMBIGUOUS_NAME))
            return
        try:
            ident = _dir_id(path_b)
            if os.path.lexists(os.path.join(path_b, _MARKER)):
                self.note(f"skipped {'/'.join(rel)}/: an output folder of maskgen ({OUTPUT_MARKER})")
                return
        except OSError as exc:
            yield from _emit(buf, self._row(rel, None, f"unreadable: {exc.strerror or exc}"))
            return
        if ident in ancestors:
            yield from _emit(buf, self._row(rel, None, SYMLINK_LOOP))
            return
        if len(rel) > MAX_FOLDER_DEPTH:
            yield from _emit(buf, self._row(rel, None, TOO_DEEP))
            return
        try:
            names, is_dir = list_dir(path_b)
        except OSError as exc:
            yield from _emit(buf, self._row(rel, None, f"unreadable: {exc.strerror or exc}"))
            return
        yield from self._files(buf, path_b, rel, names.filter(pa.array(~is_dir)))
        inner = ancestors | {ident}
        for chunk in _slices(names.filter(pa.array(is_dir))):
            for sub in chunk:
                yield from self._subdir(buf, path_b, rel, sub, inner)

    def _files(self, buf, dir_b, rel, names: pa.Array) -> Iterator[pa.RecordBatch]:
        skipped = 0
        for chunk in _slices(names):
            for name in chunk:
                if os.path.splitext(name)[1].lower() not in _IMAGE_EXTS:
                    skipped += 1
                    continue
                text, escaped = decode_name(name)
                full = os.path.join(dir_b, name)
                drop = HIDDEN if name.startswith(b".") else None
                if escaped and drop is None and os.path.lexists(os.path.join(dir_b, text.encode("utf-8"))):
                    drop = AMBIGUOUS_NAME  # its escaped text names another file: never guess
                try:
                    st = os.stat(full)
                except OSError as exc:
                    st, drop = None, drop or f"unreadable: {exc.strerror or exc}"
                if st is not None and drop is None:
                    if not stat_mod.S_ISREG(st.st_mode):
                        drop = NOT_REGULAR
                    elif st.st_size > self.max_bytes:
                        drop = TOO_LARGE
                row = self._row((*rel, text), st, drop, file=True)
                b = buf.add(**row)
                if b is not None:
                    yield b
        if skipped:
            self.note(_NON_IMAGE_NOTE, skipped)

    def _row(self, parts: tuple[str, ...], st: os.stat_result | None, drop: str | None, file: bool = False) -> dict:
        rel = "/".join(parts)
        depth = self.identity_depth
        if depth == 0:  # every image its own identity
            identity = rel[: len(rel) - len(os.path.splitext(parts[-1])[1])] if file else rel
        elif len(parts) > depth or (not file and len(parts) == depth):
            identity = "/".join(parts[:depth])
        else:
            identity = NO_IDENTITY
            drop = drop or ABOVE_IDENTITY
        size = st.st_size if st is not None else None
        mtime = st.st_mtime_ns if st is not None else 0
        return {
            "identity": identity,
            "path": rel,
            "nbytes": size,
            "cache_key": f"{self.root}/{rel}|{size}|{mtime}",
            "drop": drop,
        }

    # -- read
    def read_bytes(self, path, offset=None, nbytes=None, member=None) -> bytes:
        return read_file_range(fs_path(self.root, path), None, None, self.max_bytes, path)

    def describe(self) -> str:
        return f"{self.kind}:{self.root.name}"


def _dir_id(path_b: bytes) -> tuple[int, int]:
    st = os.stat(path_b)
    return (st.st_dev, st.st_ino)


def _emit(buf: RowBuffer, row: dict) -> Iterator[pa.RecordBatch]:
    b = buf.add(**row)
    if b is not None:
        yield b
