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

import heapq
import itertools
import os
import stat as stat_mod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

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
from maskgen.outputs import is_owned

UNIT_DIRS = 512  # top-level folders per scan unit
_IMAGE_EXTS = {e.encode() for e in IMAGE_EXTENSIONS}
_MARKER = OUTPUT_MARKER.encode()
_NON_IMAGE_NOTE = "files without an image extension skipped"


@dataclass(frozen=True)
class FolderUnit:
    """Scan work: the root's own files (``top_files``) and/or these top-level folders."""

    top_files: bool
    dirs: tuple[bytes, ...] = ()


class SortedNames:
    """Names of one kind of directory entry, sorted. A large directory's names stay in Arrow
    buffers, in chunks sorted one by one and merged lazily when read, so a flat folder of a
    million files costs its names' bytes (~20 bytes per file), not a list of a million strings;
    a small one is a plain sorted list."""

    def __init__(self, chunks: list[pa.Array], tail: list[bytes]):
        self._chunks = chunks  # each sorted
        self._tail = sorted(tail)

    def __len__(self) -> int:
        return sum(len(c) for c in self._chunks) + len(self._tail)

    def batches(self, size: int = BATCH_ROWS) -> Iterator[list[bytes]]:
        if not self._chunks:
            for i in range(0, len(self._tail), size):
                yield self._tail[i : i + size]
            return
        merged = heapq.merge(*(_chunk_names(c) for c in self._chunks), self._tail)
        while batch := list(itertools.islice(merged, size)):
            yield batch


def _chunk_names(chunk: pa.Array, step: int = 256) -> Iterator[bytes]:
    for i in range(0, len(chunk), step):  # a few hundred Python objects per chunk at a time
        yield from chunk.slice(i, step).to_pylist()


_SPILL = 65536  # entries of a directory held as Python bytes before they move to Arrow


def list_dir(path: bytes) -> tuple[SortedNames, SortedNames]:
    """The files and the sub-directories (links to directories included) of a directory,
    each sorted by name (byte order)."""
    chunks: dict[bool, list[pa.Array]] = {False: [], True: []}
    pending: dict[bool, list[bytes]] = {False: [], True: []}
    with os.scandir(path) as it:
        for e in it:
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            names = pending[is_dir]
            names.append(e.name)
            if len(names) >= _SPILL:
                names.sort()
                chunks[is_dir].append(pa.array(names, pa.binary()))
                names.clear()
    return SortedNames(chunks[False], pending[False]), SortedNames(chunks[True], pending[True])


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
        files, dirs = list_dir(self._root_b())
        units = [FolderUnit(True)] if len(files) else []
        for group in dirs.batches(UNIT_DIRS):
            units.append(FolderUnit(False, tuple(group)))
        return units

    def scan_unit(self, unit: FolderUnit) -> Iterator[pa.RecordBatch]:
        root_b = self._root_b()
        buf = RowBuffer(self.kind)
        ancestors = frozenset({_dir_id(root_b)})
        if unit.top_files:
            files, _ = list_dir(root_b)
            yield from self._files(buf, root_b, (), files)
        for name in unit.dirs:
            yield from self._subdir(buf, root_b, (), name, ancestors)
        last = buf.flush()
        if last is not None:
            yield last

    def _subdir(self, buf, parent_b, rel, name, ancestors, hidden=False) -> Iterator[pa.RecordBatch]:
        path_b = os.path.join(parent_b, name)
        hidden = hidden or name.startswith(b".")  # e.g. .ipynb_checkpoints, .Trash-1000
        text, escaped = decode_name(name)
        rel = (*rel, text)
        if escaped and os.path.lexists(os.path.join(parent_b, text.encode("utf-8"))):
            yield from _emit(buf, self._row(rel, None, AMBIGUOUS_NAME))
            return
        try:
            ident = _dir_id(path_b)
            if os.path.lexists(os.path.join(path_b, _MARKER)) and is_owned(os.fsdecode(path_b)):
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
            files, dirs = list_dir(path_b)
        except OSError as exc:
            yield from _emit(buf, self._row(rel, None, f"unreadable: {exc.strerror or exc}"))
            return
        yield from self._files(buf, path_b, rel, files, hidden)
        del files
        inner = ancestors | {ident}
        for chunk in dirs.batches():
            for sub in chunk:
                yield from self._subdir(buf, path_b, rel, sub, inner, hidden)

    def _files(self, buf, dir_b, rel, names: SortedNames, hidden: bool = False) -> Iterator[pa.RecordBatch]:
        skipped = 0
        for chunk in names.batches():
            for name in chunk:
                if os.path.splitext(name)[1].lower() not in _IMAGE_EXTS:
                    skipped += 1
                    continue
                text, escaped = decode_name(name)
                full = os.path.join(dir_b, name)
                drop = HIDDEN if hidden or name.startswith(b".") else None
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
