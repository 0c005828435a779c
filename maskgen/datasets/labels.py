"""Demographic labels from a CSV, joined to scanned rows by identity or by file.

FairFace-style files (``file,age,gender,race``) label images; identity lists label people.
Every other column becomes a string column of the manifest, and the plan spreads the mask
ratio over its groups.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

JOIN_COLUMNS = ("identity", "file", "path")


def attach_labels(table: pa.Table, csv_path: str | os.PathLike, root: str | os.PathLike) -> tuple[pa.Table, list[str]]:
    """Add the CSV's label columns to ``table``; returns the table and the label column names."""
    opts = pacsv.ConvertOptions(strings_can_be_null=True, column_types=None)
    lab = pacsv.read_csv(csv_path, convert_options=opts)
    lab = lab.cast(pa.schema([pa.field(n, pa.string()) for n in lab.column_names]))
    join = next((c for c in JOIN_COLUMNS if c in lab.column_names), None)
    if join is None:
        raise ValueError(f"{csv_path}: needs an 'identity', 'file' or 'path' column to join on")
    label_cols = [c for c in lab.column_names if c not in JOIN_COLUMNS]
    clash = [c for c in label_cols if c in table.column_names]
    if clash:
        raise ValueError(f"{csv_path}: label column(s) {clash} clash with manifest columns")
    index = {}
    for row in lab.to_pylist():
        k = row[join]
        if k is not None:
            index[Path(k).as_posix() if join != "identity" else k] = row
    if join == "identity":
        keys = table.column("identity").to_pylist()
    else:
        keys = table.column("path").to_pylist()  # relative to the source root already
    for c in label_cols:
        table = table.append_column(c, pa.array([index.get(k, {}).get(c) for k in keys], pa.string()))
    return table, label_cols
