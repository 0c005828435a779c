"""The manifest: one row per input image, from scan to shard.

It is the contract between the build pipeline (which writes it) and the audit (which reads it):
every input keeps a row, dropped and failed ones included, with the reason.
Columns a source knows nothing about stay null. Sources with demographic labels add extra
string columns (e.g. ``gender``, ``race``, ``age``) after the core columns.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

STATUS_OK = "ok"  # written to a shard
STATUS_DROPPED = "dropped"  # removed by a filter (reason says which)
STATUS_FAILED = "failed"  # could not be processed (reason says why)
STATUS_PENDING = "pending"  # scanned, not processed yet

CORE_FIELDS: list[pa.Field] = [
    pa.field("key", pa.string(), nullable=False),  # stable sample key, no dots
    pa.field("identity", pa.string(), nullable=False),  # identity name as in the source
    pa.field("label", pa.int32()),  # contiguous class label of kept identities, -1 when dropped
    pa.field("source", pa.string()),  # folder | lfw | recordio | webdataset
    pa.field("path", pa.string()),  # image file, .rec file or tar shard
    pa.field("offset", pa.int64()),  # byte offset in a .rec file, else null
    pa.field("member", pa.string()),  # sample key inside a source tar, else null
    pa.field("status", pa.string(), nullable=False),
    pa.field("reason", pa.string()),  # why dropped / failed; null when ok
    pa.field("shard", pa.string()),  # output shard file name
    pa.field("masked", pa.bool_()),  # the training image (<key>.jpg) is masked
    pa.field("mask_type", pa.string()),
    pa.field("mask_color", pa.string()),
    pa.field("mask_texture", pa.string()),
    pa.field("wear", pa.string()),
    pa.field("fit_score", pa.float32()),
    pa.field("landmarks", pa.list_(pa.float32())),  # 68 x (x, y) flattened, source-image pixels
    pa.field("box", pa.list_(pa.float32())),  # x0, y0, x1, y1
    pa.field("det_score", pa.float32()),
    pa.field("yaw", pa.float32()),
    pa.field("pitch", pa.float32()),
    pa.field("roll", pa.float32()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("ita", pa.float32()),  # Individual Typology Angle of skin pixels, degrees
    pa.field("skin_tone", pa.string()),  # ITA bin label
    pa.field("sharpness", pa.float32()),
    pa.field("brightness", pa.float32()),
    pa.field("face_size", pa.float32()),  # inter-ocular distance or box size, pixels
    pa.field("seed", pa.int64()),  # per-sample seed of the mask choice
    # Columns added by the build pipeline (after the shared core above).
    pa.field("nbytes", pa.int64()),  # size of the encoded source image (record / tar member)
    pa.field("source_label", pa.int64()),  # label as stored in the source (RecordIO), else null
    pa.field("phash", pa.int64()),  # 64-bit perceptual hash of the source image (dedup)
]
CORE_SCHEMA = pa.schema(CORE_FIELDS)
CORE_NAMES = [f.name for f in CORE_FIELDS]


def conform(table: pa.Table) -> pa.Table:
    """Cast ``table`` to the core schema: missing core columns become nulls, core columns come
    first in schema order, and extra columns (demographic labels) follow unchanged."""
    n = table.num_rows
    cols, fields = [], []
    for f in CORE_FIELDS:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            if not f.nullable:
                raise ValueError(f"manifest is missing required column {f.name!r}")
            cols.append(pa.nulls(n, f.type))
        fields.append(f)
    for name in table.column_names:
        if name not in CORE_NAMES:
            cols.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def write_manifest(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write atomically (temp file then rename) so a reader never sees a half-written manifest."""
    from maskgen.outputs import replacing

    path = Path(path)
    with replacing(path) as tmp:
        pq.write_table(conform(table), tmp)
    return path


def read_manifest(path: str | os.PathLike) -> pa.Table:
    return conform(pq.read_table(path))
