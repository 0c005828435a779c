"""The source plug-in contract: what every kind of source provides, and the registry of kinds.

A source turns a dataset into scan rows (``SCAN_SCHEMA``) without decoding an image, and
reads the encoded bytes of one row back. Scans stream: ``scan_units()`` splits the work into
small picklable units (tar shards, byte ranges of a ``.idx``, groups of top-level folders),
``scan_unit(unit)`` yields ``pa.RecordBatch``es of at most :data:`BATCH_ROWS` rows, so a scan
of millions of images never holds more than one batch of per-image Python objects, and a
build can run the units as tasks on a cluster. ``path`` is relative to ``src.root`` (POSIX).

A row the scan cannot use keeps its place with a reason in ``_drop``; every reason is one
short, stable string (reports group by it):

======================================================  =============================================================
``hidden file``                                         an image whose name, or a folder's above it, starts with ``.`` (dropped)
``above identity level``                                an image shallower than ``identity_depth`` folders (dropped)
``not a regular file``                                  a FIFO, socket or device (also through a link), never read
``file too large``                                      larger than the size cap (checked before any read)
``symlink loop``                                        a linked folder that leads back into its own ancestors
``too deep``                                            folders nested deeper than :data:`MAX_FOLDER_DEPTH`
``ambiguous name``                                      a non-UTF-8 name whose escaped form names another file too
``unreadable: <strerror>``                              ``stat``/``open`` failed (e.g. a dangling link)
``unsafe path``                                         (reads only) a path that leaves the source root
``malformed idx line``                                  a ``.idx`` line that is not ``index<TAB>offset``
``idx offset out of range``                             a ``.idx`` offset that is negative or past the end of the file
``bad magic``                                           no RecordIO magic word where a record should start
``bad record flag``                                     a continuation part where a record should start
``bad length``                                          a RecordIO length beyond the file or the record size cap
``truncated record``                                    the file ends inside a record
``bad header``                                          a record too short for its IRHeader or label array
``no image member in sample``                           a WebDataset sample without an image member
``no identity (.json identity or .cls) in sample``      a WebDataset sample without ``.json`` identity or ``.cls``
``source image is already masked and has no original``  a WebDataset sample marked masked without its ``orig.jpg`` (dropped)
``json too large``                                      a WebDataset ``.json`` member over :data:`MAX_JSON_BYTES`
``json too deep``                                       a ``.json`` nested deeper than :data:`MAX_JSON_DEPTH`
``bad cls``                                             a ``.cls`` member that is not a 64-bit integer
``unsafe member name``                                  a tar member whose name is absolute or contains ``..``
``sparse member``                                       a GNU sparse tar member (its bytes are not contiguous)
``truncated member``                                    a tar member whose data runs past the end of the shard
``truncated tar``                                       the rest of a shard cannot be read (one row for the rest)
``bad tar``                                             a shard that is not a tar file (one row)
``malformed lst line``                                  an image-list line that is not ``index<TAB>label<TAB>path``
======================================================  =============================================================

Skipped without a row (counted in :attr:`Source.notes` and logged): files without an image
extension, and folders holding ``.maskgen-output.json`` (outputs maskgen owns, e.g. a build's
``--out`` inside its source).
"""

from __future__ import annotations

import logging
import os
import re
import stat as stat_mod
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from maskgen.datasets import catalog
from maskgen.datasets.filters import ALREADY_MASKED
from maskgen.errors import InputError
from maskgen.outputs import MARKER as OUTPUT_MARKER  # noqa: F401 (re-exported: folders to skip)

log = logging.getLogger("maskgen.sources")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}

BATCH_ROWS = 8192  # rows per RecordBatch: the bound on per-image Python objects of a scan
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # size cap of one encoded image (file, record or member): a
# 100-megapixel JPEG is ~30 MB; a worker never holds more than this for one input
MAX_FOLDER_DEPTH = 64
MAX_JSON_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64
NO_IDENTITY = ""  # identity of rows that belong to nobody (they always carry a reason)

# Reasons (see the module doc); the ones that mean "not an input" drop rather than fail.
HIDDEN = "hidden file"
ABOVE_IDENTITY = "above identity level"
NOT_REGULAR = "not a regular file"
TOO_LARGE = "file too large"
SYMLINK_LOOP = "symlink loop"
TOO_DEEP = "too deep"
AMBIGUOUS_NAME = "ambiguous name"
UNSAFE_PATH = "unsafe path"
DROPPED_REASONS = frozenset({ALREADY_MASKED, HIDDEN, ABOVE_IDENTITY})

# Internal (work-table only) columns start with "_" and never reach manifest.parquet.
SCAN_SCHEMA = pa.schema(
    [
        pa.field("identity", pa.string()),
        pa.field("source", pa.string()),
        pa.field("path", pa.string()),  # relative to the source root, POSIX
        pa.field("offset", pa.int64()),
        pa.field("member", pa.string()),
        pa.field("nbytes", pa.int64()),
        pa.field("source_label", pa.int64()),
        pa.field("_cache_key", pa.string()),  # source path + place + size + mtime: landmark cache
        pa.field("_drop", pa.string()),  # a reason known at scan time, else null
    ]
)


class ReadError(InputError):
    """The bytes of one row cannot be read; ``reason`` is the row's stable reason string."""

    def __init__(self, reason: str, where: str = ""):
        super().__init__(reason, where)  # both in args: the error pickles (Ray) with its reason
        self.reason = reason
        self.where = where

    def __str__(self) -> str:
        return f"{self.reason}: {self.where}" if self.where else self.reason


class SourceNotFound(InputError, FileNotFoundError):
    """A source string names nothing that exists (also a ``FileNotFoundError``)."""

    def __init__(self, message: str):
        Exception.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0])


# ------------------------------------------------------------------ names
def decode_name(raw: bytes) -> tuple[str, bool]:
    """A file-name component as text: UTF-8 when it is, else with ``\\xNN`` escapes for the
    bytes that are not (second value True). Tabs and newlines are kept as they are."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), True


_ESCAPE = re.compile(rb"\\x([0-9a-f]{2})")


def unescape_name(text: str) -> bytes:
    """Inverse of :func:`decode_name` for an escaped name."""
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8"))


def fs_path(root: Path, rel: str) -> bytes:
    """The file-system path (bytes) of the POSIX ``rel`` inside ``root``; a non-UTF-8 name
    comes back from its escaped text. Refuses a path that leaves ``root``."""
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts:
        raise ReadError(UNSAFE_PATH, rel)
    path = os.fsencode(root)
    if "\\x" not in rel:
        return os.path.join(path, rel.encode("utf-8"))
    for comp in parts:  # per component: a name that exists as written wins over its escape
        literal = os.path.join(path, comp.encode("utf-8"))
        path = literal if "\\x" not in comp or os.path.lexists(literal) else os.path.join(path, unescape_name(comp))
    return path


# ------------------------------------------------------------------ safe reads
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: bytes | str, what: str) -> tuple[int, os.stat_result]:
    """Open a regular file for reading without ever blocking (``O_NONBLOCK``: a FIFO opens at
    once) and refuse anything else (FIFO, device, socket) by ``fstat`` of what was opened."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise ReadError(f"unreadable: {exc.strerror or exc}", what) from exc
    st = os.fstat(fd)
    if not stat_mod.S_ISREG(st.st_mode):
        os.close(fd)
        raise ReadError(NOT_REGULAR, what)
    return fd, st


def pread_exact(fd: int, nbytes: int, offset: int) -> bytes:
    """``nbytes`` at ``offset`` (fewer only at the end of the file)."""
    parts = []
    while nbytes > 0:
        b = os.pread(fd, min(nbytes, 1 << 24), offset)
        if not b:
            break
        parts.append(b)
        offset += len(b)
        nbytes -= len(b)
    return b"".join(parts)


def read_file_range(
    path: bytes | str, offset: int | None, nbytes: int | None, max_bytes: int, what: str
) -> bytes:
    """Bytes of a regular file: all of it (``offset`` None) or ``nbytes`` at ``offset``; the
    size cap is checked against ``fstat`` before anything is read."""
    fd, st = open_regular(path, what)
    try:
        if offset is None:
            if st.st_size > max_bytes:
                raise ReadError(TOO_LARGE, what)
            return pread_exact(fd, st.st_size, 0)
        offset, nbytes = int(offset), int(nbytes if nbytes is not None else -1)
        if nbytes < 0 or offset < 0:
            raise ReadError("truncated member", what)
        if nbytes > max_bytes:
            raise ReadError(TOO_LARGE, what)
        if offset + nbytes > st.st_size:
            raise ReadError("truncated member", what)
        data = pread_exact(fd, nbytes, offset)
        if len(data) != nbytes:
            raise ReadError("truncated member", what)
        return data
    finally:
        os.close(fd)


def read_file(path: str | os.PathLike, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """All bytes of a regular file given by its own path (not a source row), size-capped."""
    return read_file_range(os.fspath(path), None, None, max_bytes, os.fspath(path))


MAX_LINE_BYTES = 64 * 1024  # a longer line of an .idx or .lst is malformed (and never held)


def _rest_of_line(f) -> int:
    """Skip to the end of the current line in bounded reads; the number of bytes skipped."""
    n = 0
    while True:
        part = f.readline(MAX_LINE_BYTES)
        n += len(part)
        if not part or part.endswith(b"\n"):
            return n


def iter_lines(path: str | os.PathLike, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes | None]]:
    """``(position, line)`` of the lines of a text file that start in the byte range
    ``[start, end)``: ranges that tile a file give each line exactly once (scan units of
    ``.idx`` and ``.lst`` files). A line over :data:`MAX_LINE_BYTES` comes as None (a binary
    file without newlines is never read into memory). Only a regular file is opened (never
    blocks on a FIFO)."""
    fd, _ = open_regular(path, os.fspath(path))
    with os.fdopen(fd, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                _rest_of_line(f)  # the line that straddles start belongs to the range before
        pos = f.tell()
        while end is None or pos < end:
            line = f.readline(MAX_LINE_BYTES)
            if not line:
                return
            if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
                yield pos, None
                pos += len(line) + _rest_of_line(f)
                continue
            yield pos, line
            pos += len(line)


# ------------------------------------------------------------------ batches
class RowBuffer:
    """Scan rows collected column-wise and handed out as ``SCAN_SCHEMA`` batches."""

    def __init__(self, kind: str, size: int = BATCH_ROWS):
        self.kind = kind
        self.size = size
        self._reset()

    def _reset(self) -> None:
        self.cols: dict[str, list] = {f.name: [] for f in SCAN_SCHEMA}
        self.n = 0

    def add(
        self,
        identity: str,
        path: str,
        *,
        offset: int | None = None,
        member: str | None = None,
        nbytes: int | None = None,
        source_label: int | None = None,
        cache_key: str | None = None,
        drop: str | None = None,
    ) -> pa.RecordBatch | None:
        """Add one row; returns a full batch when one is ready."""
        c = self.cols
        c["identity"].append(identity)
        c["source"].append(self.kind)
        c["path"].append(path)
        c["offset"].append(offset)
        c["member"].append(member)
        c["nbytes"].append(nbytes)
        c["source_label"].append(source_label)
        c["_cache_key"].append(cache_key)
        c["_drop"].append(drop)
        self.n += 1
        return self.flush() if self.n >= self.size else None

    def flush(self) -> pa.RecordBatch | None:
        if not self.n:
            return None
        batch = pa.RecordBatch.from_pydict(self.cols, schema=SCAN_SCHEMA)
        self._reset()
        return batch

    def batches(self, rows: Iterator[dict]) -> Iterator[pa.RecordBatch]:
        """``rows`` (keyword dicts of :meth:`add`) as full batches, then the rest."""
        for row in rows:
            b = self.add(**row)
            if b is not None:
                yield b
        last = self.flush()
        if last is not None:
            yield last


# ------------------------------------------------------------------ the plug-in base
@dataclass(eq=False)
class Source:
    """One kind of dataset source. Subclasses set ``kind``, ``prefixes`` (the ``prefix:`` of
    source strings they take), build themselves in :meth:`from_spec`, optionally claim plain
    paths in :meth:`detect`, and implement ``scan_units``/``scan_unit``/``read_bytes``/
    ``relative_path``. Instances are small and picklable (they travel to scan and read tasks).
    """

    kind: ClassVar[str] = ""
    prefixes: ClassVar[tuple[str, ...]] = ()
    detect_order: ClassVar[int] = 100  # plain paths are offered to kinds in this order
    catalog_name: ClassVar[str | None] = None  # the catalog name of every source of this kind

    root: Path
    max_bytes: int = field(default=MAX_IMAGE_BYTES, kw_only=True)  # size cap of one image

    # -- construction
    @classmethod
    def from_spec(cls, rest: str, *, identity_depth: int = 1, data_home: str | os.PathLike | None = None) -> Source:
        """The source named by ``rest`` (the source string after ``prefix:``)."""
        raise NotImplementedError

    @classmethod
    def detect(cls, path: str) -> bool:
        """Whether a plain path (no ``prefix:``) is a source of this kind."""
        return False

    # -- scanning
    def scan_units(self) -> list:
        """Small picklable units of scan work, in scan order."""
        raise NotImplementedError

    def scan_unit(self, unit: Any) -> Iterator[pa.RecordBatch]:
        """The rows of one unit as ``SCAN_SCHEMA`` batches of at most ``BATCH_ROWS`` rows."""
        raise NotImplementedError

    def scan_batches(self) -> Iterator[pa.RecordBatch]:
        """Every unit in order: the concatenation is the scan order (deterministic)."""
        for unit in self.scan_units():
            yield from self.scan_unit(unit)

    def scan(self) -> pa.Table:
        """The whole scan as one table (a convenience for small sources)."""
        return pa.Table.from_batches(list(self.scan_batches()), schema=SCAN_SCHEMA)

    # -- reading
    def read_bytes(self, path: str, offset: int | None = None, nbytes: int | None = None, member: str | None = None) -> bytes:
        """The encoded image of one row; raises :class:`ReadError` with the row's reason."""
        raise NotImplementedError

    def relative_path(self, path: str, member: str | None = None, offset: int | None = None) -> str:
        """A machine-independent name of the image inside its source (sample metadata)."""
        return path

    # -- description
    @property
    def info(self) -> catalog.DatasetInfo:
        """Name, licence, citation and url from :mod:`maskgen.datasets.catalog` (the kind's
        ``catalog_name``, else the root folder's name, exact match only), else "unknown"."""
        found = catalog.lookup(self.catalog_name) if self.catalog_name else catalog.identify(self.root)
        return found or catalog.unknown_info(self.root.name)

    def describe(self) -> str:
        """A short description without any absolute path (goes into dataset.json)."""
        return f"{self.kind}:{self.root.name}"

    @property
    def notes(self) -> Counter:
        """What the scans of this object skipped without a row (note -> count)."""
        return self.__dict__.setdefault("_notes", Counter())

    def note(self, text: str, n: int = 1) -> None:
        if text not in self.notes:
            log.info("%s: %s", self.describe(), text)
        self.notes[text] += n

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_notes"}


_REGISTRY: dict[str, type[Source]] = {}  # prefix -> class
_KINDS: dict[str, type[Source]] = {}  # kind -> class


def register(cls: type[Source]) -> type[Source]:
    """Class decorator: make a source kind known by its kind name and its prefixes."""
    if not cls.kind or not cls.prefixes:
        raise TypeError(f"{cls.__name__} needs a kind and at least one prefix")
    for p in (cls.kind, *cls.prefixes):
        other = _REGISTRY.get(p)
        if other is not None and other is not cls:
            raise ValueError(f"source prefix {p!r} of {cls.__name__} is taken by {other.__name__}")
    for p in (cls.kind, *cls.prefixes):
        _REGISTRY[p] = cls
    _KINDS[cls.kind] = cls
    return cls
