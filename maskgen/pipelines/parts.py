"""Partition tasks: every per-row step between the scan and the shards, one task per partition.

A partition is a contiguous range of identities (``Identities.partitions``), so every rule
that needs all images of an identity (keys, ``max_images``, duplicates, which images of an
identity are masked) is local to one task. Three passes, each reading and writing Parquet
under ``<out>/work`` and returning only small, per-identity or per-shard arrays:

1. :func:`prepare_task` — keys, scan-time reasons, identity filters decided by the driver,
   the seeded ``max_images`` choice, demographic labels -> ``work/part/p-NNNNN.parquet``
   (row groups = the landmark chunks);
2. :func:`join_task` — the landmark cache joined in, failures marked, near-duplicates
   dropped -> ``work/joined/...``; returns usable counts per identity (and per label group);
3. :func:`plan_task` — the driver's per-identity decisions and per-cell masked counts
   applied: masked flags, per-sample seeds and mask specs, attribute sampling, the shard of
   each sample from its global rank -> ``work/plan/...`` sorted by shard; returns per-shard
   counts and plan-hash lanes.

Rows keep status ``pending`` until a step decides; the first reason that removes a row is
the one the manifest shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from maskgen.datasets.filters import CAP_REASON, reason_class, stable_hash
from maskgen.datasets.manifest import STATUS_DROPPED, STATUS_FAILED, STATUS_PENDING
from maskgen.datasets.sources import DROPPED_REASONS
from maskgen.outputs import replacing
from maskgen.pipelines import plan as P
from maskgen.pipelines.scan import expand_reasons

PLAN_ROW_GROUP = 4096
SPEC_COLUMNS = (("mask_type", "type"), ("mask_color", "color"), ("mask_texture", "texture"), ("wear", "wear"))


def part_path(work: str | Path, stage: str, p: int) -> Path:
    return Path(work) / stage / f"p-{p:05d}.parquet"


def _write(table: pa.Table, path: Path, row_group_size: int) -> None:
    with replacing(path) as tmp:
        pq.write_table(table, tmp, row_group_size=max(1, row_group_size))


def _set(table: pa.Table, name: str, values, type_=None) -> pa.Table:
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, type_)
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, arr) if i >= 0 else table.append_column(name, arr)


def _runs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each run of equal values in a sorted array."""
    if len(codes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    return starts, np.r_[starts[1:], len(codes)]


def _mark(status: np.ndarray, reason: np.ndarray, mask: np.ndarray, new_status: str, why) -> None:
    m = mask & (status == STATUS_PENDING)
    status[m] = new_status
    reason[m] = why if isinstance(why, str) else why[m]


# ---- 1. prepare ----


def prepare_task(task: dict) -> dict:
    """Rows of identities ``[lo, hi)`` from the scan parts, keyed and pre-filtered."""
    lo = task["lo"]
    names = task["names"]  # the partition's identity names (Arrow: no Python object per name)
    names = names if isinstance(names, pa.Array) else pa.array(names, pa.string())
    f = (pc.field("identity") >= names[0].as_py()) & (pc.field("identity") <= names[-1].as_py())
    t = pads.dataset(task["scan_files"], format="parquet").to_table(filter=f)
    t = t.sort_by([("identity", "ascending"), ("_unit", "ascending"), ("path", "ascending"),
                   ("offset", "ascending"), ("member", "ascending")]).drop_columns(["_unit"])
    n = t.num_rows
    ident_local = pc.index_in(t.column("identity"), value_set=names).to_numpy(zero_copy_only=False).astype(np.int64)
    starts, ends = _runs(ident_local)
    img = np.arange(n, dtype=np.int64) - np.repeat(starts, ends - starts)
    w = task["key_width"]
    ids = ident_local + lo
    keys = [f"{a:0{w}d}-{b:04d}" for a, b in zip(ids.tolist(), img.tolist())]
    status = np.full(n, STATUS_PENDING, dtype=object)
    reason = np.full(n, None, dtype=object)
    drop = np.asarray(t.column("_drop").to_pylist(), dtype=object)
    has_drop = np.array([d is not None for d in drop], dtype=bool)
    dropped = np.array([d in DROPPED_REASONS for d in drop], bool)  # not inputs: hidden, above the identity level, ...
    _mark(status, reason, has_drop & dropped, STATUS_DROPPED, drop)
    _mark(status, reason, has_drop, STATUS_FAILED, drop)
    pre = expand_reasons(task["reason_pre"])[ident_local] if n else np.zeros(0, object)
    _mark(status, reason, np.array([r is not None for r in pre], bool), STATUS_DROPPED, pre)
    mx = task["max_images"]
    if mx:
        over = np.zeros(n, bool)
        for a, b in zip(starts, ends):
            idx = a + np.flatnonzero(status[a:b] == STATUS_PENDING)
            if len(idx) > mx:
                ident = names[int(ident_local[a])].as_py()
                rng = np.random.default_rng([task["seed"], stable_hash(ident)])
                over[rng.permutation(idx)[mx:]] = True
        _mark(status, reason, over, STATUS_DROPPED, f"over max_images ({mx}) for identity")
    post = expand_reasons(task["reason_post"])[ident_local] if n else np.zeros(0, object)
    _mark(status, reason, np.array([r is not None for r in post], bool), STATUS_DROPPED, post)
    t = t.drop_columns(["_drop"])
    t = t.add_column(0, "key", pa.array(keys, pa.string()))
    t = t.append_column("_id", pa.array(ids.astype(np.int32)))
    if task["labels"]:
        from maskgen.datasets.labels import attach_labels

        t, _ = attach_labels(t, task["labels"], ".")
    t = t.append_column("status", pa.array(status.tolist(), pa.string()))
    t = t.append_column("reason", pa.array(reason.tolist(), pa.string()))
    cs = task["chunk_size"]
    _write(t, Path(task["path"]), cs)
    pend = status == STATUS_PENDING
    per_chunk = np.add.reduceat(pend.astype(np.int64), np.arange(0, n, cs)) if n else np.zeros(0, np.int64)
    return {"index": task["index"], "rows": n, "pending_per_chunk": per_chunk.tolist()}


# ---- 2. join the landmark cache ----


def _group_strings(t: pa.Table, columns: list[str]) -> list[str] | None:
    if not columns:
        return None
    cols = [t.column(c).to_pylist() for c in columns]
    return ["|".join(f"{c}={v}" for c, v in zip(columns, vals)) for vals in zip(*cols)]


def join_task(task: dict) -> dict:
    """Landmark results joined to partition rows; returns usable counts per identity (and per
    (group, identity) cell, and cap priorities, when the plan needs them)."""
    from maskgen.datasets.dedup import near_duplicates
    from maskgen.pipelines.analyze import CACHE_DIR, CACHE_SCHEMA, read_part

    t = pq.read_table(task["part"])
    n = t.num_rows
    t = t.append_column("_row", pa.array(np.arange(n, dtype=np.int64)))
    caches = [read_part(Path(task["out"]) / CACHE_DIR / c) for c in task["chunk_names"]]
    caches = [c.filter(pc.equal(c.column("detector"), task["tag"])) for c in caches if c is not None]
    cache = pa.concat_tables(caches) if caches else pa.Table.from_pylist([], schema=CACHE_SCHEMA)
    # index_in takes the first row of a key found in several parts (the Arrow hash join does
    # not carry list columns)
    pos = pc.index_in(t.column("_cache_key"), value_set=cache.column("_cache_key"))
    sub = cache.drop_columns(["_cache_key", "detector"]).take(pos)
    for name in sub.column_names:
        t = t.append_column(name, sub.column(name))
    status = np.asarray(t.column("status").to_pylist(), dtype=object)
    reason = np.asarray(t.column("reason").to_pylist(), dtype=object)
    a_status = np.asarray(t.column("a_status").to_pylist(), dtype=object)
    a_reason = np.asarray(t.column("a_reason").to_pylist(), dtype=object)
    _mark(status, reason, a_status == "failed", STATUS_FAILED, a_reason)
    missing = np.array([s is None for s in a_status], bool)
    if missing.any():
        chunk_of = np.arange(n) // task["chunk_size"]
        errs = task["chunk_errors"]
        why = np.array([f"landmarks task failed: {errs.get(int(c), 'no result')}" for c in chunk_of], dtype=object)
        _mark(status, reason, missing, STATUS_FAILED, why)
    ids = t.column("_id").to_numpy().astype(np.int64)
    if task["dedup"]:
        keys = t.column("key").to_pylist()
        ph = t.column("phash").to_pylist()
        dup = np.zeros(n, bool)
        why = np.full(n, None, dtype=object)
        starts, ends = _runs(ids)
        for a, b in zip(starts, ends):
            valid = [i for i in range(a, b) if status[i] == STATUS_PENDING and ph[i] is not None]
            if len(valid) < 2:
                continue
            for i, (j, d) in near_duplicates(np.array([ph[k] for k in valid], dtype=np.int64), task["threshold"]).items():
                dup[valid[i]] = True
                why[valid[i]] = f"near-duplicate of {keys[valid[j]]} (hamming {d})"
        _mark(status, reason, dup, STATUS_DROPPED, why)
    t = _set(t, "status", status.tolist(), pa.string())
    t = _set(t, "reason", reason.tolist(), pa.string())
    t = t.drop_columns(["_row", "a_status", "a_reason", "n_faces"])
    _write(t, Path(task["path"]), PLAN_ROW_GROUP)
    pend = status == STATUS_PENDING
    lo, hi = task["lo"], task["hi"]
    out = {"index": task["index"], "usable": np.bincount(ids[pend] - lo, minlength=hi - lo)}
    groups = _group_strings(t, task["stratify"])
    if groups is not None:
        g = np.asarray(groups, dtype=object)[pend]
        cells = pa.table({"group": pa.array(g.tolist(), pa.string()), "_id": pa.array(ids[pend])})
        out["cells"] = cells.group_by(["group", "_id"]).aggregate([("_id", "count")]).rename_columns(
            ["group", "_id", "n"])
        if task["cap"]:
            out["cap"] = {"group": g, "_id": ids[pend],
                          "prio": P.key_seeds(task["seed"], [k for k, m in zip(t.column("key").to_pylist(), pend) if m], "cap:")}
    return out


# ---- 3. plan ----


def plan_task(task: dict) -> dict:
    """Masked flags, seeds, specs and shards for a partition; the plan part sorted by shard."""
    t = pq.read_table(task["part"])
    n = t.num_rows
    lo = task["lo"]
    ids = t.column("_id").to_numpy().astype(np.int64)
    local = ids - lo
    status = np.asarray(t.column("status").to_pylist(), dtype=object)
    reason = np.asarray(t.column("reason").to_pylist(), dtype=object)
    late = expand_reasons(task["reason_late"])[local] if n else np.zeros(0, object)
    _mark(status, reason, np.array([r is not None for r in late], bool), STATUS_DROPPED, late)
    keys = t.column("key").to_pylist()
    groups = _group_strings(t, task["stratify"])
    if task["cap"] is not None:
        cap, thr = task["cap"]
        pend = status == STATUS_PENDING
        prio = np.zeros(n, np.int64)
        prio[pend] = P.key_seeds(task["seed"], [k for k, m in zip(keys, pend) if m], "cap:")
        lim = np.array([thr.get(g, np.iinfo(np.int64).max) for g in groups], dtype=np.int64)
        _mark(status, reason, pend & (prio > lim), STATUS_DROPPED, f"{CAP_REASON} ({cap})")
    planned = status == STATUS_PENDING
    idx = np.flatnonzero(planned)
    # which samples are masked: per (group, identity) cell, m of its samples in key order
    masked = np.zeros(n, bool)
    cm = task["cell_m"]  # cells with m > 0: identity indices, masked counts, groups (or None)
    groups_m = cm["groups"] if cm["groups"] is not None else [None] * len(cm["ids"])
    cell_m = {(g, int(i)): int(k) for g, i, k in zip(groups_m, cm["ids"].tolist(), cm["m"].tolist())}
    g_arr = np.asarray(groups, dtype=object) if groups is not None else None
    if len(idx) and cell_m:
        if g_arr is None:
            starts, ends = _runs(ids[idx])
            for a, b in zip(starts, ends):
                m = cell_m.get((None, int(ids[idx[a]])), 0)
                if m:
                    cell = idx[a:b]
                    masked[cell[P.pick_in_cell(task["seed"], keys[cell[0]], len(cell), m)]] = True
        else:
            cells: dict[tuple, list[int]] = {}
            for i in idx.tolist():
                cells.setdefault((g_arr[i], int(ids[i])), []).append(i)
            for c, rows in cells.items():
                m = cell_m.get(c, 0)
                if m:
                    masked[np.asarray(rows)[P.pick_in_cell(task["seed"], keys[rows[0]], len(rows), m)]] = True
    label_of = np.asarray(task["labels"], dtype=np.int64)
    label = np.full(n, -1, np.int32)
    label[idx] = label_of[local[idx]]
    seeds = np.full(n, -1, np.int64)
    seeds[idx] = P.key_seeds(task["seed"], [keys[i] for i in idx])
    shard = np.full(n, -1, np.int32)
    ranks = task["rank_base"] + np.arange(len(idx), dtype=np.int64)
    shard[idx] = P.shard_of(ranks, task["n_total"], task["seed"], task["shuffle"], task["per_shard"])
    mix = task["mix"]
    spec_cols: dict[str, list] = {c: [None] * n for c, _ in SPEC_COLUMNS}
    valve = np.zeros(n, bool)
    for i in idx.tolist():
        if masked[i] or task["twins"]:
            spec = mix.draw(np.random.default_rng(int(seeds[i])))
            for c, k in SPEC_COLUMNS:
                spec_cols[c][i] = spec[k]
            valve[i] = bool(spec.get("valve"))
    attr = _attribute_rows(t, idx, keys, masked, task)
    t = _set(t, "status", status.tolist(), pa.string())
    t = _set(t, "reason", reason.tolist(), pa.string())
    t = _set(t, "label", label)
    t = _set(t, "masked", masked)
    t = _set(t, "seed", seeds)
    for c, _ in SPEC_COLUMNS:
        t = _set(t, c, spec_cols[c], pa.string())
    t = _set(t, "mask_valve", valve)
    t = _set(t, "attr_measured", attr)
    t = _set(t, "_shard", shard)
    # plan-hash lanes of each planned row, summed per shard
    lab_cols = task["label_columns"]
    demo = [t.column(c).to_pylist() for c in lab_cols]
    lms = t.column("landmarks")
    ck = t.column("_cache_key").to_pylist()
    parts = []
    for i in idx.tolist():
        spec = [spec_cols[c][i] for c, _ in SPEC_COLUMNS] + [bool(valve[i])]
        lm = lms[i].values.to_numpy(zero_copy_only=False).astype(np.float32).tobytes() if lms[i].is_valid else b""
        parts.append(json.dumps([keys[i], int(label[i]), bool(masked[i]), int(seeds[i]), spec, ck[i],
                                 [d[i] for d in demo], bool(attr[i])], ensure_ascii=False).encode("utf-8", "surrogateescape") + lm)
    lanes = P.row_digests(parts)
    sh = shard[idx].astype(np.int64)
    present = np.unique(sh)
    acc = np.zeros((len(present), 2), np.uint64)
    P.add_lanes(acc, np.searchsorted(present, sh), lanes)
    counts = np.bincount(np.searchsorted(present, sh), minlength=len(present)) if len(sh) else np.zeros(0, np.int64)
    if task["estimate"]:
        return _estimate_bytes(t.take(pa.array(idx[: task["estimate"]])), task)
    t = t.sort_by([("_shard", "ascending"), ("key", "ascending")])
    _write(t, Path(task["path"]), PLAN_ROW_GROUP)
    unplanned = ~planned
    reasons: dict[str, int] = {}
    for s, r in zip(status[unplanned], reason[unplanned]):
        k = f"{s}: {reason_class(r)}"
        reasons[k] = reasons.get(k, 0) + 1
    return {"index": task["index"], "shards": present.astype(np.int32), "counts": counts.astype(np.int64),
            "lanes": acc, "reasons": reasons, "rows": n, "planned": len(idx),
            "dropped": int((status == STATUS_DROPPED).sum()), "failed": int((status == STATUS_FAILED).sum())}


def passthrough_candidates(t: pa.Table, opts: dict) -> np.ndarray:
    """Rows whose output frame is their input frame (``--output original``, or an aligned crop
    already at the output size): unmasked, their bytes may pass through undecoded."""
    from maskgen.datasets.faces import DEFERRED

    n = t.num_rows
    if opts["output"] == "original":
        return np.ones(n, bool)
    size = opts["image_size"]
    backend = np.asarray(t.column("backend").to_pylist(), dtype=object)
    w = np.asarray(pc.fill_null(t.column("width"), -1).to_numpy(zero_copy_only=False))
    h = np.asarray(pc.fill_null(t.column("height"), -1).to_numpy(zero_copy_only=False))
    return np.isin(backend, list(DEFERRED)) & (w == size) & (h == size)


def _attribute_rows(t: pa.Table, idx: np.ndarray, keys: list[str], masked: np.ndarray, task: dict) -> np.ndarray:
    """Which planned rows get per-image attributes: ``all``; ``none``; ``sample`` (a seeded
    uniform share of every planned row); ``auto`` (every row that is decoded anyway — masked,
    twins, or not a pass-through candidate — and a seeded share of the others)."""
    mode, rate = task["attributes"]
    n = t.num_rows
    attr = np.zeros(n, bool)
    if mode == "none" or not len(idx):
        return attr
    if mode == "all":
        attr[idx] = True
        return attr
    drawn = P.key_seeds(task["seed"], [keys[i] for i in idx], "attributes:") < int(rate * 2**63)
    if mode == "sample":
        attr[idx] = drawn
    else:
        undecoded = passthrough_candidates(t, task["opts"])[idx] & ~masked[idx] & (not task["twins"])
        attr[idx] = np.where(undecoded, drawn, True)
    return attr


def _estimate_bytes(rows: pa.Table, task: dict) -> float:
    """Mean written size (tar headers included) of a partition's first planned samples (the
    ``shard_bytes`` estimate: a pure function of the inputs, so the split is reproducible)."""
    from maskgen.datasets.attributes import face_attributes
    from maskgen.pipelines.execute import process_sample

    ctx = {"opts": task["opts"], "src": task["src"], "face_attributes": face_attributes,
           "label_columns": task["label_columns"]}
    sizes = []
    for row in rows.to_pylist():
        try:
            members, _ = process_sample(row, ctx)
        except Exception:  # a failing sample just does not count
            continue
        sizes.append(sum(512 + -(-len(b) // 512) * 512 for b in members.values()))
    return float(np.mean(sizes)) if sizes else 0.0
