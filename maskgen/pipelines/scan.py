"""Scan stage: the source -> Parquet parts on disk, and the identity table (the driver's state).

Each scan unit (a part of the source: a shard, a byte range of a ``.rec``, a folder subtree)
is scanned by one task, which writes ``work/scan/u-NNNNN.parquet`` (rows sorted by identity,
then location) and returns only per-identity counts. The driver concatenates those counts
into :class:`Identities` (sorted names + counts: O(identities)) and cuts the identities into
contiguous partitions of about ``PART_ROWS`` rows: every later per-row stage runs as one task
per partition, and no stage brings rows back to the driver.

The adapter functions (``units``, ``unit_batches``, ``read_bytes``, ``sample_name``) are the
one place that knows how a :class:`~maskgen.datasets.sources.Source` is driven.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maskgen.helper import Helper, HelperCallError, HelperError
from maskgen.outputs import replacing

PART_ROWS = 50_000  # rows per partition (identities are never split)
SCAN_ROW_GROUP = 65_536
SORT_COLUMNS = ("identity", "path", "offset", "member")


# ---- source adapter: the one place that drives a Source ----


def units(src) -> list:
    """The source's units of scan work (picklable, small), in scan order."""
    return list(src.scan_units())


def unit_batches(src, unit):
    """The rows of one unit as record batches (``SCAN_SCHEMA``), paths relative to the source."""
    yield from src.scan_unit(unit)


def read_bytes(src, row: dict) -> bytes:
    """The encoded image of one row (runs in a worker); raises the source's ``ReadError``."""
    off = row.get("offset")
    nb = row.get("nbytes")
    return src.read_bytes(row["path"], None if off is None or off < 0 else off,
                          None if nb is None or nb < 0 else nb, row.get("member"))


def sample_name(src, row: dict) -> str:
    """A machine-independent name of the image inside its source (sample metadata)."""
    return src.relative_path(row["path"], row.get("member"), row.get("offset"))


# ---- scan tasks ----


def scan_task(task: dict) -> pa.Table:
    """Scan one unit into ``work/scan/u-NNNNN.parquet``; returns its per-identity counts."""
    src, unit, i = task["src"], task["unit"], task["index"]
    batches = list(unit_batches(src, unit))
    table = pa.Table.from_batches(batches) if batches else None
    if table is None or table.num_rows == 0:
        return _with_notes(pa.table({"identity": pa.array([], pa.string()), "n": pa.array([], pa.int64()),
                                     "n_usable": pa.array([], pa.int64())}), src)
    table = table.append_column("_unit", pa.array(np.full(table.num_rows, i, np.int32)))
    table = table.sort_by([(c, "ascending") for c in SORT_COLUMNS])
    with replacing(Path(task["path"])) as tmp:
        pq.write_table(table, tmp, row_group_size=SCAN_ROW_GROUP)
    usable = pc.is_null(table.column("_drop")).cast(pa.int64())
    counts = pa.table({"identity": table.column("identity"), "n": pa.array(np.ones(table.num_rows, np.int64)),
                       "n_usable": usable})
    counts = counts.group_by("identity", use_threads=False).aggregate([("n", "sum"), ("n_usable", "sum")])
    return _with_notes(counts.rename_columns(["identity", "n", "n_usable"]).sort_by("identity"), src)


def _with_notes(counts: pa.Table, src) -> pa.Table:
    """The counts with what the unit's scan skipped without a row (``src.notes``) as metadata."""
    notes = dict(getattr(src, "notes", {}) or {})
    return counts.replace_schema_metadata({b"maskgen.notes": json.dumps(notes).encode()}) if notes else counts


def scan_notes(counts: list[pa.Table]) -> dict[str, int]:
    """What the scan skipped without a row, summed over the units' counts (from :func:`scan_task`)."""
    total: dict[str, int] = {}
    for c in counts:
        meta = c.schema.metadata or {}
        for text, n in json.loads(meta.get(b"maskgen.notes", b"{}")).items():
            total[text] = total.get(text, 0) + int(n)
    return total


@dataclass
class Identities:
    """Every scanned identity, sorted by name (its index is the key's first part), with counts.
    All per-identity state of a build lives here as arrays: O(identities), no row data."""

    names: pa.Array  # string, sorted
    n_rows: np.ndarray  # int64: scanned rows
    n_usable: np.ndarray  # int64: rows without a scan-time reason

    @classmethod
    def from_counts(cls, counts: list[pa.Table]) -> Identities:
        """The identity table of the units' counts (each sorted by identity, as
        :func:`scan_task` returns them). Units that hold consecutive identity ranges (byte
        ranges of a ``.rec``, folder subtrees) concatenate into sorted order: then no sort
        runs, and only the names that two units share are summed. The transient memory is
        a few bytes per identity, never a hash table of every name. A list of counts is
        emptied as it is read (the caller's last reference to the tables)."""
        tables = [c for c in counts if c.num_rows]
        if isinstance(counts, list):
            counts.clear()  # consumed: the units' tables go once their columns are copied
        if not tables:
            return cls(pa.array([], pa.string()), np.zeros(0, np.int64), np.zeros(0, np.int64))
        runs = _consecutive_runs(tables)
        if runs is not None:  # sorted, names unique: one copy of the names, no sort, no merge
            del tables
            names = pa.chunked_array([r[0] for r in runs], pa.string()).combine_chunks()
            n = np.concatenate([r[1] for r in runs])
            usable = np.concatenate([r[2] for r in runs])
            return cls(names, n, usable)
        names = pa.chunked_array([c.column("identity") for c in tables], pa.string()).combine_chunks()
        n = np.concatenate([c.column("n").to_numpy() for c in tables]).astype(np.int64, copy=False)
        usable = np.concatenate([c.column("n_usable").to_numpy() for c in tables]).astype(np.int64, copy=False)
        del tables
        if len(names) > 1 and not pc.all(pc.less_equal(names[:-1], names[1:])).as_py():
            order = pc.sort_indices(names)
            names = names.take(order)
            order = order.to_numpy()
            n, usable = n[order], usable[order]
            del order
        if len(names) > 1:
            same = pc.equal(names[1:], names[:-1]).to_numpy(zero_copy_only=False)
            if same.any():  # a name in two units: one row, counts summed
                starts = np.flatnonzero(np.r_[True, ~same])
                names = names.take(pa.array(starts))
                n, usable = np.add.reduceat(n, starts), np.add.reduceat(usable, starts)
        return cls(names, n, usable)

    def __len__(self) -> int:
        return len(self.names)

    def partition_starts(self, rows: int) -> np.ndarray:
        """The first identity of each partition of about ``rows`` scanned rows."""
        before = np.cumsum(self.n_rows)  # rows before each identity, computed in place
        before -= self.n_rows
        before //= max(1, rows)
        return np.flatnonzero(np.r_[True, before[1:] != before[:-1]])

    @property
    def key_width(self) -> int:
        return max(6, len(str(max(len(self) - 1, 0))))

    def partitions(self, rows: int | None = None) -> list[tuple[int, int]]:
        """Contiguous identity ranges ``[lo, hi)`` of about ``rows`` (default ``PART_ROWS``)
        scanned rows each."""
        rows = rows or PART_ROWS
        n = len(self)
        if n == 0:
            return []
        starts = self.partition_starts(rows)
        ends = np.r_[starts[1:], n]
        return [(int(a), int(b)) for a, b in zip(starts, ends)]


def _consecutive_runs(tables: list[pa.Table]) -> list[tuple[pa.Array, np.ndarray, np.ndarray]] | None:
    """``(names, n, n_usable)`` per unit when every unit's names are strictly increasing and
    each unit starts at or after the previous one's last name, with a name that spans a unit
    boundary folded into the earlier unit (names slices are zero-copy); None otherwise."""
    runs: list[tuple[pa.Array, np.ndarray, np.ndarray]] = []
    last: str | None = None
    for t in tables:
        names = t.column("identity").combine_chunks()
        if len(names) > 1 and not pc.all(pc.less(names[:-1], names[1:])).as_py():
            return None
        n = t.column("n").to_numpy().astype(np.int64)
        usable = t.column("n_usable").to_numpy().astype(np.int64)
        first = names[0].as_py()
        if last is not None and first < last:
            return None
        if last is not None and first == last:  # the same identity at the end of the previous unit
            prev = runs[-1]
            prev[1][-1] += n[0]
            prev[2][-1] += usable[0]
            names, n, usable = names[1:], n[1:], usable[1:]
            if not len(names):
                continue
        runs.append((names, n, usable))
        last = names[len(names) - 1].as_py()
    return runs


class Reasons:
    """Why each identity is left out (or None), as a code per identity into a table of the
    distinct texts: 4 bytes per identity, where an object array costs 8 and every test on it
    a Python loop. ``part(lo, hi)`` is what a partition's task gets; :func:`expand_reasons`
    turns it back into texts there."""

    def __init__(self, n: int) -> None:
        self.codes = np.zeros(n, np.int32)
        self.texts: list[str | None] = [None]
        self._index: dict[str, int] = {}

    def code(self, text: str) -> int:
        c = self._index.get(text)
        if c is None:
            c = self._index[text] = len(self.texts)
            self.texts.append(text)
        return c

    @property
    def free(self) -> np.ndarray:
        """Identities without a reason (bool)."""
        return self.codes == 0

    def mark(self, mask: np.ndarray, why) -> None:
        """Give the identities of ``mask`` that have no reason yet the reason ``why``: a text,
        or ``(values, fmt)``: ``fmt(v)`` for each identity's value ``v`` (one text per
        distinct value)."""
        m = np.asarray(mask, bool) & (self.codes == 0)
        if not m.any():
            return
        if isinstance(why, str):
            self.codes[m] = self.code(why)
            return
        values, fmt = why
        idx = np.flatnonzero(m)
        vals = np.asarray(values)[idx]
        for v in np.unique(vals):
            self.codes[idx[vals == v]] = self.code(fmt(v.item()))

    def mark_beyond(self, alive: np.ndarray, limit: int, why: str) -> None:
        """The ``alive`` identities after the first ``limit`` get ``why``."""
        self.mark(alive & (np.cumsum(alive) > limit), why)

    def part(self, lo: int, hi: int) -> dict:
        return {"codes": self.codes[lo:hi], "texts": list(self.texts)}


def expand_reasons(part) -> np.ndarray:
    """The texts (object array, None for none) of a :meth:`Reasons.part`."""
    return np.asarray(part["texts"], dtype=object)[np.asarray(part["codes"], np.intp)]


def scan_files(work: Path, n_units: int) -> list[str]:
    return [str(work / "scan" / f"u-{i:05d}.parquet") for i in range(n_units)]


# ---- the scan helper: scan units while Ray starts ----


class ScanHelper(Helper):
    """A helper process (:class:`maskgen.helper.Helper`) that runs :func:`scan_task` for the
    driver while a local Ray starts: the driver spends no CPU on the scan and holds no rows.
    Unlike a ``multiprocessing`` child it never imports the user's main module, so a script
    without an ``if __name__ == "__main__":`` guard (or one piped to ``python -``) is not run a
    second time.

    :meth:`scan` returns a unit's counts, or None once the helper has failed (it could not
    start, died, or its task raised): the caller leaves the remaining units to Ray, which
    reports errors the usual way."""

    def __init__(self) -> None:
        super().__init__(preload=("maskgen.pipelines.scan",))

    def scan(self, task: dict) -> pa.Table | None:
        if not self.alive:
            return None
        try:
            return self.call(scan_task, task)
        except (HelperError, HelperCallError):
            self.close()
            return None
