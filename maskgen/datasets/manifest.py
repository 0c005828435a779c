"""The manifest: one row per input image, from scan to shard.

It is the contract between the build pipeline (which writes it) and the audit (which reads it):
every input keeps a row, dropped and failed ones included, with the reason.
Sources with demographic labels add extra string columns (e.g. ``gender``, ``race``, ``age``)
after the core columns.

Types are chosen to read back the same in pyarrow, pandas, polars and duckdb: integer columns
are never null (pandas would turn a nullable integer column into floats and change large
values such as seeds), with documented sentinels (``-1``: not applicable / unknown); boolean
columns are never null (``False``); strings, floats and lists may be null. ``phash`` is a
16-digit hex string (every 64-bit value is a possible hash, so no integer sentinel exists).

Landmarks: 68 points of dlib's iBUG layout as one flat list ``[x0, y0, x1, y1, ... x67, y67]``
(136 float32), ``landmarks`` in source-image pixels (after EXIF rotation), ``landmarks_crop``
in the pixels of the written image (the aligned crop, or the source frame for ``--output
original``). The sample ``.json`` uses the same flat layout under the same names.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

STATUS_OK = "ok"  # written to a shard
STATUS_DROPPED = "dropped"  # removed by a filter (reason says which)
STATUS_FAILED = "failed"  # could not be processed (reason says why)
STATUS_PENDING = "pending"  # scanned, not processed yet

NO_INT = -1  # the sentinel of every integer column: not applicable / unknown

CORE_FIELDS: list[pa.Field] = [
    pa.field("key", pa.string(), nullable=False),  # stable sample key, no dots
    pa.field("identity", pa.string(), nullable=False),  # identity name as in the source
    pa.field("label", pa.int32(), nullable=False),  # contiguous class label of written identities, -1 otherwise
    pa.field("source", pa.string()),  # the source kind: folder | lfw | recordio | webdataset | lst | ...
    pa.field("path", pa.string()),  # image file, .rec file or tar shard, relative to the source root
    pa.field("offset", pa.int64(), nullable=False),  # byte offset in a .rec file / source tar, else -1
    pa.field("member", pa.string()),  # sample member inside a source tar, else null
    pa.field("status", pa.string(), nullable=False),
    pa.field("reason", pa.string()),  # why dropped / failed; null when ok
    pa.field("shard", pa.string()),  # output shard file name
    pa.field("masked", pa.bool_(), nullable=False),  # the training image (<key>.jpg) is masked
    pa.field("mask_type", pa.string()),
    pa.field("mask_color", pa.string()),
    pa.field("mask_texture", pa.string()),
    pa.field("wear", pa.string()),
    pa.field("mask_valve", pa.bool_(), nullable=False),
    pa.field("fit_score", pa.float32()),
    pa.field("landmarks", pa.list_(pa.float32())),  # 68 x (x, y) flat, source-image pixels
    pa.field("landmarks_crop", pa.list_(pa.float32())),  # the same points in the written image
    pa.field("box", pa.list_(pa.float32())),  # x0, y0, x1, y1 (source pixels)
    pa.field("det_score", pa.float32()),
    pa.field("yaw", pa.float32()),
    pa.field("pitch", pa.float32()),
    pa.field("roll", pa.float32()),
    pa.field("width", pa.int32(), nullable=False),  # source image size, -1 when not decoded
    pa.field("height", pa.int32(), nullable=False),
    pa.field("ita", pa.float32()),  # Individual Typology Angle of skin pixels, degrees
    pa.field("skin_tone", pa.string()),  # ITA bin label
    pa.field("sharpness", pa.float32()),
    pa.field("brightness", pa.float32()),
    pa.field("face_size", pa.float32()),  # inter-ocular distance or box size, pixels
    pa.field("attr_measured", pa.bool_(), nullable=False),  # ita .. face_size measured for this row
    pa.field("passthrough", pa.bool_(), nullable=False),  # the source bytes were written unchanged
    pa.field("seed", pa.int64(), nullable=False),  # per-sample seed of the mask choice, -1 when not planned
    # Columns added by the build pipeline (after the shared core above).
    pa.field("nbytes", pa.int64(), nullable=False),  # size of the encoded source image, -1 unknown
    pa.field("source_label", pa.int64(), nullable=False),  # label as stored in the source (RecordIO, .cls), else -1
    pa.field("phash", pa.string()),  # 64-bit perceptual hash of the source image, 16 hex digits
]
CORE_SCHEMA = pa.schema(CORE_FIELDS)
CORE_NAMES = [f.name for f in CORE_FIELDS]
_INTERNAL = {"_id", "_cache_key", "_shard", "_drop", "_unit", "backend"}


def _hex(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    vals = col.to_pylist()
    return pa.array([None if v is None else format(int(v) & 0xFFFFFFFFFFFFFFFF, "016x") for v in vals], pa.string())


def conform(table: pa.Table) -> pa.Table:
    """Cast ``table`` to the core schema: missing core columns become nulls (or the sentinel
    of a non-null column), core columns come first in schema order, extra columns (demographic
    labels) follow unchanged; internal columns (``_``-prefixed) are left out."""
    n = table.num_rows
    cols, fields = [], []
    for f in CORE_FIELDS:
        if f.name in table.column_names:
            col = table.column(f.name)
            if f.name == "phash" and not pa.types.is_string(col.type):
                col = _hex(col)
            col = col.cast(f.type)
        else:
            if f.name in ("key", "identity", "status"):
                raise ValueError(f"manifest is missing required column {f.name!r}")
            col = pa.nulls(n, f.type)
        if not f.nullable and pa.types.is_boolean(f.type):
            col = pc.fill_null(col, False)
        elif not f.nullable and pa.types.is_integer(f.type):
            col = pc.fill_null(col, NO_INT)
        cols.append(col)
        fields.append(f)
    for name in table.column_names:
        if name not in CORE_NAMES and not name.startswith("_") and name not in _INTERNAL:
            cols.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def to_manifest(table: pa.Table, label_columns: list[str]) -> pa.Table:
    """Manifest rows from a work table (plan part or shard results): the core columns, then
    the label columns in the given order."""
    t = conform(table)
    extra = [c for c in label_columns if c in t.column_names]
    return t.select(CORE_NAMES + extra)


def write_manifest(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write atomically (temp file then rename) so a reader never sees a half-written manifest."""
    from maskgen.outputs import replacing

    path = Path(path)
    with replacing(path) as tmp:
        pq.write_table(conform(table), tmp)
    return path


def read_manifest(path: str | os.PathLike) -> pa.Table:
    return conform(pq.read_table(path))
