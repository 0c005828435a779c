"""The per-image table of a folder audit: one row per image found, as Parquet and CSV.

What the report aggregates, row by row: the path relative to the audited folder, status and
reason, the measured attributes and their bins, and the joined labels. Parquet keeps the
types (an integer stays an integer in pandas, polars and duckdb); the CSV is for
spreadsheets, so a text cell that a spreadsheet would read as a formula is prefixed with a
quote mark (:func:`maskgen.audit.escape.csv_cell`).
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maskgen.audit.escape import csv_cell
from maskgen.audit.stats import derive_columns, label_columns

# (column, arrow type) in table order; label columns follow as strings.
COLUMNS: list[tuple[str, pa.DataType]] = [
    ("key", pa.string()), ("identity", pa.string()), ("path", pa.string()),
    ("status", pa.string()), ("reason", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("faces", pa.int32()),
    ("det_score", pa.float32()), ("yaw", pa.float32()), ("pitch", pa.float32()),
    ("roll", pa.float32()), ("face_size", pa.float32()),
    ("ita", pa.float32()), ("skin_tone", pa.string()), ("ita_raw", pa.float32()),
    ("white_corrected", pa.bool_()), ("attribute_region", pa.string()),
    ("sharpness", pa.float32()), ("sharpness_bin", pa.string()),
    ("brightness", pa.float32()), ("brightness_bin", pa.string()),
]
_SOURCE = {"faces": "_faces", "attribute_region": "_region", "ita_raw": "_ita_raw",
           "white_corrected": "_white_corrected"}


def image_table(df: pd.DataFrame) -> pa.Table:
    """The per-image table of an audited (folder) manifest frame."""
    d = derive_columns(df)
    arrays, fields = [], []
    for name, typ in COLUMNS:
        col = _SOURCE.get(name, name)
        values = d[col].tolist() if col in d.columns else [None] * len(d)
        arrays.append(_array(values, typ))
        fields.append(pa.field(name, typ))
    for c in label_columns(df):
        if c in {n for n, _ in COLUMNS}:
            continue
        arrays.append(_array([None if _missing(v) else str(v) for v in df[c].tolist()],
                             pa.string()))
        fields.append(pa.field(c, pa.string()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _array(values: list, typ: pa.DataType) -> pa.Array:
    if pa.types.is_string(typ):
        return pa.array([None if _missing(v) else str(v) for v in values], typ)
    if pa.types.is_boolean(typ):
        return pa.array([None if _missing(v) else bool(v) for v in values], typ)
    if pa.types.is_integer(typ):
        return pa.array([None if _missing(v) else int(v) for v in values], typ)
    return pa.array([None if _missing(v) else float(v) for v in values], typ)


def per_image_tables(df: pd.DataFrame) -> dict[str, bytes]:
    """``images.parquet`` and ``images.csv`` as bytes (same rows, same columns)."""
    table = image_table(df)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd")
    return {"images.parquet": buf.getvalue().to_pybytes(), "images.csv": to_csv(table)}


def _fmt(v) -> object:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not np.isfinite(v) else f"{v:.6g}"
    return csv_cell(v)


def to_csv(table: pa.Table) -> bytes:
    """RFC 4180 CSV (quoted where needed, ``\\n`` line ends), formula-safe text cells."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([csv_cell(n) for n in table.column_names])
    cols = [c.to_pylist() for c in table.columns]
    for row in zip(*cols):
        w.writerow([_fmt(v) for v in row])
    return out.getvalue().encode("utf-8")
