"""Landmarks stage: decode each kept image once, find its face, hash it; cached by source file.

One task per chunk (a row group of a partition): the result per image (68 landmarks, box,
pose, size, pHash, or the reason it failed) lands in a Parquet part of the landmark cache,
``<out>/landmarks/<tag>-<digest>.parquet``, named by the detector tag and the chunk's cache
keys (source location + size + mtime). Chunks depend only on the scan, so a rebuild with
another ratio, mask mix or filter — or another build pointed at it with ``landmarks_from`` —
finds its parts by name and skips detection; a killed build keeps every finished chunk. The
task returns counts only.

Aligned crops (the ``aligned`` backends) are decoded and hashed here, but their landmark fit
is deferred to the shard task, and made only for the samples whose pixels are needed there
(masked, twins, sampled for attributes): at ratio 0.1 most aligned crops pass through
untouched (``backend`` in the cache says which fit a deferred row gets).

The per-image pass itself is :func:`maskgen.datasets.faces.analyze_rows`, the same one the
audit's folder scan runs; this module adds the cache around it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maskgen.datasets.faces import analyze_rows
from maskgen.outputs import replacing

CACHE_SCHEMA = pa.schema(
    [
        pa.field("_cache_key", pa.string()),
        pa.field("detector", pa.string()),
        pa.field("a_status", pa.string()),  # ok | failed
        pa.field("a_reason", pa.string()),
        pa.field("landmarks", pa.list_(pa.float32())),
        pa.field("box", pa.list_(pa.float32())),
        pa.field("det_score", pa.float32()),
        pa.field("yaw", pa.float32()),
        pa.field("pitch", pa.float32()),
        pa.field("roll", pa.float32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("phash", pa.int64()),
        pa.field("n_faces", pa.int32()),
        pa.field("backend", pa.string()),  # set when the landmark fit is deferred (aligned crops)
    ]
)
CACHE_FILE = "landmarks.parquet"  # the single-file cache of earlier versions (still read)
CACHE_DIR = "landmarks"


def cache_tag(detector: str) -> str:
    """The landmark cache's name for ``detector`` (:func:`maskgen.masks.landmarks.backend_tag`:
    which detector ``auto`` runs and which model aligned crops get are part of it, so results of
    different backends never mix in one cache)."""
    from maskgen.masks.landmarks import backend_tag

    return backend_tag(detector)


def results_table(results: list[dict]) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in results] for f in CACHE_SCHEMA}
    return pa.Table.from_pydict(cols, schema=CACHE_SCHEMA)


def chunk_name(tag: str, cache_keys: list[str]) -> str:
    """The cache part of a chunk: named by the detector tag and the chunk's cache keys."""
    h = hashlib.blake2b(tag.encode(), digest_size=12)
    for k in cache_keys:
        h.update(k.encode("utf-8", "surrogateescape") + b"\0")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in tag)
    return f"{safe}-{h.hexdigest()}.parquet"


def read_part(path: Path, keys: set[str] | None = None) -> pa.Table | None:
    """Rows of one cache file (of any version), optionally only those of ``keys``."""
    if not path.is_file():
        return None
    try:
        t = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return None  # a damaged cache part is recomputed, never fatal
    if "_cache_key" not in t.column_names:
        return None
    if "backend" not in t.column_names:
        t = t.append_column("backend", pa.nulls(t.num_rows, pa.string()))
    t = t.select([f.name for f in CACHE_SCHEMA]).cast(CACHE_SCHEMA)
    if keys is not None:
        t = t.filter(pc.is_in(t.column("_cache_key"), pa.array(sorted(keys), pa.string())))
    return t


def chunks_task(task: dict) -> list[dict]:
    """:func:`chunk_task` for several consecutive chunks of one partition (``task["chunks"]``):
    one Ray task for many cheap chunks (aligned crops) keeps the driver's per-task cost small;
    each chunk still writes its own cache part as soon as it is done."""
    from maskgen.pipelines.runner import one_thread

    one_thread()
    part = pq.ParquetFile(task["part"])
    return [chunk_task({**task, "chunk": j}, part) for j in task["chunks"]]


def chunk_task(task: dict, part: pq.ParquetFile | None = None) -> dict:
    """Landmarks of one chunk's pending rows: reuse the chunk's cache part (here, then in each
    ``landmarks_from`` folder, then legacy single-file caches), analyze what is missing, write
    the part, return counts."""
    from maskgen.pipelines.scan import read_bytes

    part = part or pq.ParquetFile(task["part"])
    rows = part.read_row_group(task["chunk"], columns=["source", "path", "offset", "member", "nbytes", "_cache_key", "status"])
    all_keys = rows.column("_cache_key").to_pylist()
    name = chunk_name(task["tag"], all_keys)
    pend = rows.filter(pc.equal(rows.column("status"), "pending"))
    want = set(pend.column("_cache_key").to_pylist())
    found: list[pa.Table] = []
    have: set[str] = set()
    own = Path(task["out"]) / CACHE_DIR / name
    changed = False
    own_rows = read_part(own)
    if own_rows is not None:  # keep what the part holds, also rows pending another time
        own_rows = own_rows.filter(pc.equal(own_rows.column("detector"), task["tag"]))
        found.append(own_rows)
        have = set(own_rows.column("_cache_key").to_pylist()) & want
    foreign = [Path(d) / CACHE_DIR / name for d in task["from_dirs"]] + [Path(f) for f in task["legacy"]]
    for p in foreign:
        if not want - have:
            break
        t = read_part(p, want - have)
        if t is None:
            continue
        t = t.filter(pc.equal(t.column("detector"), task["tag"]))
        if t.num_rows:
            found.append(t)
            have |= set(t.column("_cache_key").to_pylist())
            changed = True
    todo = [r for r in pend.to_pylist() if r["_cache_key"] not in have]
    if todo:
        src = task["src"]
        res = analyze_rows(todo, task["detector"], task["tag"], read=lambda r: read_bytes(src, r), defer=task["defer"])
        found.append(results_table(res))
        changed = True
    table = pa.concat_tables(found) if found else results_table([])
    if changed:
        table = _unique_sorted(table)
        with replacing(own) as tmp:
            pq.write_table(table, tmp)
    st = pc.is_in(table.column("_cache_key"), pa.array(sorted(want), pa.string()))
    sel = table.filter(st)
    n_ok = int(pc.sum(pc.equal(sel.column("a_status"), "ok")).as_py() or 0)
    return {"chunk": task["chunk"], "part_index": task["part_index"], "name": name, "rows": len(want),
            "computed": len(todo), "ok": n_ok, "failed": len(want) - n_ok}


def _unique_sorted(t: pa.Table) -> pa.Table:
    """One row per cache key (the last given wins), sorted by key."""
    t = t.append_column("_i", pa.array(np.arange(t.num_rows)))
    last = t.group_by("_cache_key").aggregate([("_i", "max")]).column("_i_max")
    return t.take(last).drop_columns(["_i"]).sort_by("_cache_key")


def legacy_caches(paths: list[str | os.PathLike]) -> list[str]:
    """Single-file caches (``landmarks.parquet``) among build folders / files given."""
    out = []
    for p in paths:
        p = Path(p)
        f = p / CACHE_FILE if p.is_dir() else p
        if f.is_file():
            out.append(str(f))
    return out
