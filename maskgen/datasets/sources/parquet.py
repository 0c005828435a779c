"""``parquet:PATH`` (or a path ending in ``.parquet``): images stored in Parquet files, as the
Hugging Face ``datasets`` exports write them.

PATH is one file, a folder (every ``*.parquet`` below it, hidden folders and maskgen's own
outputs skipped) or a glob. Each file needs an image column — a struct ``{bytes, path}`` (the
``datasets`` ``Image`` feature) or plain binary — and an identity column — integers (a
``ClassLabel``: its names from the file's ``huggingface`` metadata become the identities) or
strings. Both are detected by name (:data:`IMAGE_NAMES`, :data:`LABEL_NAMES`) and type, or named
in the source string: ``parquet:PATH?image=COL&label=COL``.

A scan reads the footers, then one row group at a time only the two columns; image bytes are
measured, never decoded. Units are row groups, in file then row order (deterministic). A row's
``path`` is its file, ``offset`` its row in the file, ``member`` the image column; a worker
reads the bytes back by row group and keeps only the last group read (rows come in scan
order, so each group is read about once). Reasons of this kind:

============================  ============================================================
``bad parquet``               a file that is not Parquet (one row for the file)
``no image column``           no (or more than one candidate) image column (one row per file)
``no label column``           no (or more than one candidate) identity column (one row per file)
``bad row group``             each row of a row group that cannot be read
``no image bytes``            a null or empty image value
``image not embedded``        an ``Image`` struct with a ``path`` but no ``bytes``
``no label``                  a null or empty identity
``bad label``                 a float identity that is not an integer
============================  ============================================================

This kind is one file plus its test (``tests/test_source_parquet.py``; see docs/extending.md).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maskgen.datasets.sources.base import (
    NO_IDENTITY,
    OUTPUT_MARKER,
    TOO_LARGE,
    ReadError,
    RowBuffer,
    Source,
    SourceNotFound,
    fs_path,
    open_regular,
    register,
)

IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "bytes")
LABEL_NAMES = ("identity", "label", "labels", "person", "person_id", "subject", "id", "class", "cls", "name")

BAD_PARQUET = "bad parquet"
NO_IMAGE_COLUMN = "no image column"
NO_LABEL_COLUMN = "no label column"
BAD_ROW_GROUP = "bad row group"
NO_IMAGE_BYTES = "no image bytes"
NOT_EMBEDDED = "image not embedded"
NO_LABEL = "no label"
BAD_LABEL = "bad label"


@dataclass(frozen=True)
class ParquetUnit:
    """Row group ``group`` of ``file`` (rows ``first .. first + rows - 1`` of the file); a unit
    with ``reason`` set is the one row of a file that gives no images."""

    file: str
    group: int
    first: int
    rows: int
    image: str = ""
    label: str = ""
    reason: str | None = None


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)


def _is_image_type(t: pa.DataType) -> bool:
    if _is_binary(t):
        return True
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and _is_binary(t.field("bytes").type)


def _is_label_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_floating(t)


def pick_column(schema: pa.Schema, given: str | None, names: tuple[str, ...], fits) -> str | None:
    """The column named ``given`` when it fits, else the first of ``names`` (case-insensitive)
    that fits, else the only column that fits; None when there is none or several."""
    if given is not None:
        i = schema.get_field_index(given)
        return given if i >= 0 and fits(schema.field(i).type) else None
    fitting = [f.name for f in schema if fits(f.type)]
    for want in names:
        for name in fitting:
            if name.lower() == want:
                return name
    return fitting[0] if len(fitting) == 1 else None


def class_names(schema: pa.Schema, column: str) -> list[str] | None:
    """The ``ClassLabel`` names of ``column`` from Hugging Face's schema metadata, if any."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw or len(raw) > 64 * 1024 * 1024:
        return None
    try:
        feature = json.loads(raw)["info"]["features"][column]
    except (ValueError, KeyError, TypeError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else None


def _split_spec(rest: str) -> tuple[str, dict[str, str]]:
    """``PATH?image=a&label=b`` -> (PATH, options); a ``?`` not followed by known keys is part of PATH."""
    path, sep, query = rest.rpartition("?")
    if sep:
        opts = dict(parse_qsl(query, keep_blank_values=True))
        if opts and set(opts) <= {"image", "label"}:
            return path, opts
    return rest, {}


@register
@dataclass(eq=False)
class ParquetSource(Source):
    kind = "parquet"
    prefixes = ("parquet", "pq")
    detect_order = 27

    files: tuple[str, ...] = ()  # relative to root, POSIX, sorted
    image_column: str | None = None
    label_column: str | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)  # the last row group read

    @classmethod
    def from_spec(cls, rest, *, identity_depth=1, data_home=None):
        spec, opts = _split_spec(rest)
        p = Path(spec).expanduser()
        if p.is_dir():
            root = p.resolve()
            files = sorted(_parquet_files(root))
        elif p.exists():
            root, files = p.resolve().parent, [p.name]
        elif glob.has_magic(spec):
            pattern = os.path.expanduser(spec)
            magic = min(i for i, c in enumerate(pattern) if c in "*?[")
            root = Path(os.path.dirname(pattern[:magic]) or ".").resolve()
            found = [Path(f).resolve() for f in glob.glob(pattern, recursive=True)]
            files = sorted(f.relative_to(root).as_posix() for f in found if f.is_file() and f.is_relative_to(root))
        else:
            raise SourceNotFound(f"Parquet source {spec} does not exist")
        if not files:
            raise SourceNotFound(f"Parquet source {spec}: no .parquet files")
        return cls(root, files=tuple(files), image_column=opts.get("image"), label_column=opts.get("label"))

    @classmethod
    def detect(cls, path: str) -> bool:
        return _split_spec(path)[0].endswith(".parquet")

    def describe(self) -> str:
        return f"{self.kind}:{self.root.name}" + (f"/{self.files[0]}" if len(self.files) == 1 else "")

    def relative_path(self, path: str, member: str | None = None, offset: int | None = None) -> str:
        return f"{path}@{offset}" if offset is not None else path

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_cache"] = {}  # row groups read in one process never travel
        return state

    # -- scan
    @contextmanager
    def _open(self, file: str) -> Iterator[pq.ParquetFile]:
        """The Parquet file ``file`` (regular files only, never blocking on a FIFO), closed after."""
        fd, _ = open_regular(fs_path(self.root, file), file)
        with os.fdopen(fd, "rb") as f:
            try:
                pf = pq.ParquetFile(f)
            except (OSError, pa.ArrowException) as exc:  # not Parquet: bad magic, bad footer
                raise ReadError(BAD_PARQUET, file) from exc
            yield pf

    def scan_units(self) -> list[ParquetUnit]:
        units = []
        for file in self.files:
            try:
                with self._open(file) as pf:
                    schema, meta = pf.schema_arrow, pf.metadata
            except ReadError as exc:
                units.append(ParquetUnit(file, -1, 0, 0, reason=exc.reason))
                continue
            image = pick_column(schema, self.image_column, IMAGE_NAMES, _is_image_type)
            label = pick_column(schema, self.label_column, LABEL_NAMES, _is_label_type)
            reason = NO_IMAGE_COLUMN if image is None else NO_LABEL_COLUMN if label is None else None
            if reason:
                units.append(ParquetUnit(file, -1, 0, 0, reason=reason))
                continue
            first = 0
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                units.append(ParquetUnit(file, g, first, n, image, label))
                first += n
        return units

    def scan_unit(self, unit: ParquetUnit) -> Iterator[pa.RecordBatch]:
        yield from RowBuffer(self.kind).batches(self._rows(unit))

    def _rows(self, unit: ParquetUnit) -> Iterator[dict]:
        try:
            st = os.stat(fs_path(self.root, unit.file))
            stamp = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError as exc:
            yield self._file_row(unit.file, f"unreadable: {exc.strerror or exc}")
            return
        if unit.reason:
            yield self._file_row(unit.file, unit.reason)
            return
        key = f"{self.root}/{unit.file}"
        try:
            with self._open(unit.file) as pf:
                table = pf.read_row_group(unit.group, columns=[unit.image, unit.label])
                names = class_names(pf.schema_arrow, unit.label)
            sizes, missing = _image_sizes(table.column(unit.image).combine_chunks())
            labels = table.column(unit.label).combine_chunks()
        except (ReadError, OSError, pa.ArrowException) as exc:
            reason = exc.reason if isinstance(exc, ReadError) else BAD_ROW_GROUP
            for i in range(unit.rows):
                r = unit.first + i
                yield {"identity": NO_IDENTITY, "path": unit.file, "offset": r, "member": unit.image,
                       "cache_key": f"{key}@{r}|{stamp}", "drop": reason}
            return
        for i, (nbytes, no_bytes, value) in enumerate(zip(sizes, missing, labels.to_pylist())):
            r = unit.first + i
            identity, source_label, drop = _identity(value, names)
            if no_bytes is not None:
                drop = no_bytes
            elif nbytes > self.max_bytes:
                drop = TOO_LARGE
            yield {"identity": identity, "path": unit.file, "offset": r, "member": unit.image, "nbytes": nbytes,
                   "source_label": source_label, "cache_key": f"{key}@{r}|{nbytes}|{stamp}", "drop": drop}

    def _file_row(self, file: str, reason: str) -> dict:
        return {"identity": NO_IDENTITY, "path": file, "cache_key": f"{self.root}/{file}|file", "drop": reason}

    # -- read
    def read_bytes(self, path, offset=None, nbytes=None, member=None) -> bytes:
        if offset is None or not member:
            raise ReadError(NO_IMAGE_BYTES, path)
        where = f"{path}@{offset}"
        group, first, column = self._group_of(path, int(offset), member)
        value = column[int(offset) - first]
        data = _bytes_of(value)
        if data is None:
            raise ReadError(NOT_EMBEDDED if _is_struct_with_path(value) else NO_IMAGE_BYTES, where)
        if len(data) > self.max_bytes:
            raise ReadError(TOO_LARGE, where)
        return data

    def _group_of(self, file: str, row: int, column_name: str) -> tuple[int, int, pa.Array]:
        """(row group, its first row, its image column) holding ``row`` of ``file``; only the
        last group read is kept, so a worker reading rows in order reads each group once."""
        cached = self._cache.get(file)
        if cached is not None and cached[3] == column_name and cached[1] <= row < cached[1] + len(cached[2]):
            return cached[0], cached[1], cached[2]
        with self._open(file) as pf:
            first = 0
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if first <= row < first + n:
                    try:
                        column = pf.read_row_group(g, columns=[column_name]).column(column_name).combine_chunks()
                    except (OSError, pa.ArrowException, KeyError) as exc:
                        raise ReadError(BAD_ROW_GROUP, f"{file}@{row}") from exc
                    self._cache.clear()  # one row group held per process, whatever the number of files
                    self._cache[file] = (g, first, column, column_name)
                    return g, first, column
                first += n
        raise ReadError(NO_IMAGE_BYTES, f"{file}@{row}")


def _parquet_files(root: Path) -> Iterator[str]:
    """``*.parquet`` below ``root`` (POSIX, relative), hidden entries and maskgen outputs skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        if OUTPUT_MARKER in filenames:
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        for f in filenames:
            if f.endswith(".parquet") and not f.startswith("."):
                yield (rel / f).as_posix()


def _image_sizes(column: pa.Array) -> tuple[list[int | None], list[str | None]]:
    """Byte length of every image value and, where it has none, the reason (no decode)."""
    if pa.types.is_struct(column.type):
        data = pc.struct_field(column, "bytes")
        has_path = (pc.is_valid(pc.struct_field(column, "path")) if column.type.get_field_index("path") >= 0
                    else pa.array([False] * len(column)))
        # a null struct is as missing as null bytes
        data = pc.if_else(pc.is_valid(column), data, pa.scalar(None, data.type))
        has_path = pc.and_(pc.is_valid(column), has_path)
    else:
        data, has_path = column, pa.array([False] * len(column))
    sizes = pc.binary_length(data).to_pylist()
    reasons = [None if n else (NOT_EMBEDDED if n is None and p else NO_IMAGE_BYTES)
               for n, p in zip(sizes, pc.fill_null(has_path, False).to_pylist())]
    return sizes, reasons


def _identity(value: Any, names: list[str] | None) -> tuple[str, int | None, str | None]:
    """(identity, source label, reason) of one identity value."""
    if value is None or value == "":
        return NO_IDENTITY, None, NO_LABEL
    if isinstance(value, float):
        if not value.is_integer() or abs(value) >= 2**63:
            return NO_IDENTITY, None, BAD_LABEL
        value = int(value)
    if isinstance(value, int):
        if names is not None and 0 <= value < len(names):
            return names[value], value, None
        return str(value), value, None
    return str(value), None, None


def _bytes_of(value: pa.Scalar) -> bytes | None:
    if isinstance(value, pa.StructScalar):
        if not value.is_valid:
            return None
        value = value["bytes"]
    data = value.as_py()
    return data or None


def _is_struct_with_path(value: pa.Scalar) -> bool:
    return (isinstance(value, pa.StructScalar) and value.is_valid and value.type.get_field_index("path") >= 0
            and value["path"].is_valid)
