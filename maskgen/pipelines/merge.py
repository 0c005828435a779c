"""Merge: the final manifest by a streaming concatenation of parts, and ``classes.tsv``.

The manifest is written by one task, never gathered in the driver: first the rows that
reached no shard (dropped or failed before the plan), partition by partition in key order,
then each shard's rows (``stats/<shard>.parquet``, results joined in by the shard task) in
shard order. Each part becomes row groups of one Parquet file (temp name, renamed), so the
memory used is one part at a time, and the same inputs give the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from maskgen.datasets.manifest import STATUS_FAILED, STATUS_OK, to_manifest
from maskgen.outputs import replacing

MANIFEST_ROW_GROUP = 65_536


def manifest_task(task: dict) -> dict:
    """Write ``manifest.parquet``; returns its row count and the written classes' count."""
    from maskgen.pipelines.execute import read_shard_rows

    out = Path(task["out"])
    cols = task["label_columns"]
    writer = None
    n_rows = 0
    labels: set[int] = set()

    def emit(t: pa.Table) -> None:
        nonlocal writer, n_rows
        t = to_manifest(t, cols)
        if writer is None:
            writer = pq.ParquetWriter(tmp, t.schema)
        if t.num_rows:
            writer.write_table(t, row_group_size=MANIFEST_ROW_GROUP)
            n_rows += t.num_rows
            ok = pc.equal(t.column("status"), STATUS_OK)
            labels.update(np.unique(t.column("label").filter(ok).to_numpy()).tolist())

    with replacing(out / "manifest.parquet") as tmp:
        for f in task["plan_files"]:
            emit(pads.dataset(f, format="parquet").to_table(filter=pc.field("_shard") == -1))
        for index, name, error in task["shards"]:
            stem = name[: -len(".tar")]
            if error is None:
                emit(pq.read_table(out / "stats" / f"{stem}.parquet"))
                continue
            t = read_shard_rows(task["plan_files"], index)
            n = t.num_rows
            for k, v in (("status", [STATUS_FAILED] * n), ("reason", [f"shard task failed: {error}"] * n)):
                t = t.set_column(t.schema.get_field_index(k), k, pa.array(v, pa.string()))
            emit(t)
        if writer is None:  # nothing at all: an empty manifest with the full schema
            from maskgen.datasets.manifest import CORE_SCHEMA

            writer = pq.ParquetWriter(tmp, CORE_SCHEMA)
        writer.close()
    return {"rows": n_rows, "classes_written": len(labels)}


def _escape(name: str) -> str:
    """A name as one TSV field: backslash, tab, newline and CR escaped as ``\\\\ \\t \\n \\r``;
    bytes that were not UTF-8 (kept as surrogate escapes by the scan) as ``\\xNN``."""
    out = name.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    if any("\udc80" <= ch <= "\udcff" for ch in out):
        out = "".join(f"\\x{ord(ch) - 0xDC00:02x}" if "\udc80" <= ch <= "\udcff" else ch for ch in out)
    return out


NAMES_BATCH = 16_384


def write_names(path: Path, names: pa.Array) -> None:
    """The identity names as an Arrow IPC file of 16,384-name batches (read back a batch at a
    time by :func:`classes_tsv`; Arrow's Parquet reader costs the driver ~15 MiB more)."""
    table = pa.table({"identity": names})
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table, max_chunksize=NAMES_BATCH)


def classes_tsv(names_file: Path, kept: np.ndarray):
    """``label<TAB>identity`` per line for the labelled identities (names escaped, see
    :func:`_escape`), as encoded blocks: the identity names are read from ``names_file``
    (:func:`write_names`) a batch at a time, so only one block's Python strings exist at once
    (:func:`maskgen.outputs.write_file` writes them as they come)."""
    label = 0
    start = 0
    with pa.OSFile(str(names_file)) as f:
        reader = pa.ipc.open_file(f)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            k = kept[start : start + batch.num_rows]
            start += batch.num_rows
            sel = np.flatnonzero(k)
            if not len(sel):
                continue
            names = batch.column(0).take(pa.array(sel)).to_pylist()
            yield "".join(f"{label + j}\t{_escape(n)}\n" for j, n in enumerate(names)).encode("utf-8", "surrogateescape")
            label += len(sel)
    if start != len(kept):
        raise ValueError(f"{names_file} holds {start} names for {len(kept)} identities")
