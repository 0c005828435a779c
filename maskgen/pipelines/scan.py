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
    return _with_notes(counts.group_by("identity").aggregate([("n", "sum"), ("n_usable", "sum")]).rename_columns(
        ["identity", "n", "n_usable"]), src)


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
        t = pa.concat_tables(counts) if counts else pa.table({"identity": pa.array([], pa.string()),
                                                               "n": pa.array([], pa.int64()),
                                                               "n_usable": pa.array([], pa.int64())})
        t = t.group_by("identity").aggregate([("n", "sum"), ("n_usable", "sum")])
        t = t.sort_by("identity")
        return cls(t.column("identity").combine_chunks(), t.column("n_sum").to_numpy().astype(np.int64),
                   t.column("n_usable_sum").to_numpy().astype(np.int64))

    def __len__(self) -> int:
        return len(self.names)

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
        before = np.cumsum(self.n_rows) - self.n_rows
        part = before // max(1, rows)
        starts = np.flatnonzero(np.r_[True, part[1:] != part[:-1]])
        ends = np.r_[starts[1:], n]
        return [(int(a), int(b)) for a, b in zip(starts, ends)]


def scan_files(work: Path, n_units: int) -> list[str]:
    return [str(work / "scan" / f"u-{i:05d}.parquet") for i in range(n_units)]


# ---- the scan helper: scan units while Ray starts ----


class ScanHelper:
    """A plain Python process (``python -m maskgen.pipelines.scan``) that runs :func:`scan_task`
    for the driver while a local Ray starts: the driver spends no CPU on the scan and holds no
    rows. Unlike a ``multiprocessing`` child it never imports the user's main module, so a
    script without an ``if __name__ == "__main__":`` guard (or one piped to ``python -``) is
    not run a second time. Tasks and results travel pickled over the helper's stdin/stdout (a
    process this one started, running maskgen's own code).

    :meth:`scan` returns a unit's counts, or None once the helper has failed (it could not
    start, died, or its task raised): the caller leaves the remaining units to Ray, which
    reports errors the usual way."""

    def __init__(self) -> None:
        self.proc = None

    def __enter__(self) -> ScanHelper:
        import subprocess
        import sys

        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "maskgen.pipelines.scan"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:
            self.proc = None
        return self

    def scan(self, task: dict) -> pa.Table | None:
        import pickle

        if self.proc is None:
            return None
        try:
            pickle.dump(task, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
            ok, value = pickle.load(self.proc.stdout)
        except (OSError, EOFError, pickle.PickleError):
            ok, value = False, None
        if not ok:
            self.close()
            return None
        return value

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=30)
        except Exception:
            proc.kill()
            proc.wait()

    def __exit__(self, *exc) -> None:
        self.close()


def _serve() -> None:
    """The helper's loop: pickled tasks on stdin -> ``(ok, counts or error text)`` on stdout."""
    import pickle
    import sys

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but results goes to the driver's pipe
    while True:
        try:
            task = pickle.load(inp)
        except EOFError:
            return
        try:
            result = (True, scan_task(task))
        except Exception as exc:  # reported as a failure: the driver hands the unit to Ray
            result = (False, f"{type(exc).__name__}: {exc}")
        pickle.dump(result, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


if __name__ == "__main__":
    _serve()
