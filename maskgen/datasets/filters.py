"""Identity and image filters: each drop keeps its row and says why.

Filters work on a :class:`WorkSet` (the scanned rows plus a status and reason per row) and
only ever move rows from ``pending`` to ``dropped`` or ``failed``, so the manifest can show
every input with the first reason that removed it and the counts add up.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from maskgen.data_home import dataset_dir
from maskgen.datasets import lfw as lfw_mod
from maskgen.datasets.dedup import near_duplicates
from maskgen.datasets.manifest import STATUS_DROPPED, STATUS_FAILED, STATUS_PENDING


@dataclass
class WorkSet:
    """The build's table of rows with a mutable status / reason per row."""

    table: pa.Table
    status: np.ndarray = field(init=False)
    reason: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = self.table.num_rows
        self.status = np.full(n, STATUS_PENDING, dtype=object)
        self.reason = np.full(n, None, dtype=object)
        self._cols: dict[str, np.ndarray] = {}

    @property
    def pending(self) -> np.ndarray:
        return self.status == STATUS_PENDING

    def col(self, name: str) -> np.ndarray:
        """A column as an object array (cached: the table never changes)."""
        if name not in self._cols:
            arr = np.empty(self.table.num_rows, dtype=object)
            arr[:] = self.table.column(name).to_pylist()
            self._cols[name] = arr
        return self._cols[name]

    def mark(self, mask: np.ndarray, status: str, reason: str | np.ndarray) -> int:
        """Move pending rows in ``mask`` to ``status``; returns how many moved."""
        m = mask & self.pending
        self.status[m] = status
        self.reason[m] = reason if isinstance(reason, str) else reason[m]
        return int(m.sum())

    def reasons(self) -> dict[str, int]:
        return count_reasons(self.status, self.reason)


def count_reasons(status, reason) -> dict[str, int]:
    """Count of rows per ``status: reason class`` (ok rows excluded), the top line of reports."""
    c = Counter(f"{s}: {reason_class(r)}" for s, r in zip(status, reason) if s not in (STATUS_PENDING, "ok"))
    return dict(sorted(c.items()))


def isin(values: np.ndarray, names) -> np.ndarray:
    """``np.isin`` for object arrays of strings, through a set (linear, not sort-based)."""
    s = set(names)
    return np.fromiter((v in s for v in values), dtype=bool, count=len(values))


def reason_class(reason: str | None) -> str:
    """Collapse per-row details (``near-duplicate of 000012-0003``) into a countable class."""
    if not reason:
        return "-"
    return reason.split(" (")[0].split(" of ")[0]


def assign_keys(table: pa.Table) -> pa.Table:
    """Sort rows by (identity, location) and add stable keys ``<identity-index>-<image-index>``.

    Indices count over every scanned identity in sorted order, so filters that drop other
    identities never rename a sample, and keys contain no dots (WebDataset splits on them).
    """
    ident = table.column("identity").to_pylist()
    path = table.column("path").to_pylist()
    off = [o if o is not None else -1 for o in table.column("offset").to_pylist()]
    mem = [m or "" for m in table.column("member").to_pylist()]
    order = sorted(range(len(ident)), key=lambda i: (ident[i], path[i], off[i], mem[i]))
    table = table.take(pa.array(order, type=pa.int64()))
    ident = [ident[i] for i in order]
    names = sorted(set(ident))
    index = {n: i for i, n in enumerate(names)}
    wi = max(6, len(str(max(len(names) - 1, 0))))
    counts: dict[str, int] = defaultdict(int)
    keys = []
    for n in ident:
        j = counts[n]
        counts[n] += 1
        keys.append(f"{index[n]:0{wi}d}-{j:04d}")
    return table.add_column(0, "key", pa.array(keys, pa.string()))


def read_names(spec: str | os.PathLike | list[str] | tuple[str, ...] | None) -> set[str]:
    """Names from a list, a comma-separated string, or a file (first column of each line)."""
    if spec is None:
        return set()
    if isinstance(spec, (list, tuple, set)):
        out: set[str] = set()
        for s in spec:
            out |= read_names(s)
        return out
    p = Path(spec)
    if p.is_file():
        return {ln.split()[0] for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    return {s.strip() for s in str(spec).split(",") if s.strip()}


# the manifest reason of rows removed by a per-group cap (the build's --cap-per-group, the
# audit's rebalancing)
CAP_REASON = "cap per group"

# Evaluation sets whose identities a training build can leave out.
EVAL_SETS = {
    "lfw": "every LFW identity (lfw-names.txt)",
    "lfw-pairs": "the people of LFW View 2 pairs.txt",
    "lfw-people": "the people of LFW View 2 people.txt",
    "lfw-devtest": "the people of pairsDevTest.txt",
}


def eval_names(spec: str, data_home: str | os.PathLike | None = None) -> set[str]:
    """Identities of an evaluation set (``EVAL_SETS`` name) or of a pairs/people/names file."""
    p = Path(spec)
    if p.is_file():
        first = p.read_text().splitlines()[0].split()
        if len(first) == 2 and all(t.isdigit() for t in first):
            return lfw_mod.pairs_names(p)  # pairs.txt header "folds<TAB>n"
        try:
            return lfw_mod.pairs_names(p)
        except (ValueError, IndexError):
            return read_names(p)
    root = dataset_dir("lfw", data_home)
    files = {
        "lfw": None,
        "lfw-pairs": root / "pairs.txt",
        "lfw-people": root / "people.txt",
        "lfw-devtest": root / "pairsDevTest.txt",
    }
    if spec not in files:
        raise ValueError(f"unknown evaluation set {spec!r}; use one of {sorted(EVAL_SETS)} or a file")
    if not root.is_dir():
        raise FileNotFoundError(f"excluding {spec!r} needs LFW's protocol files in {root}")
    if spec == "lfw":
        return lfw_mod.lfw_names(root)
    if spec == "lfw-people":
        return lfw_mod.people_names(files[spec])
    return lfw_mod.pairs_names(files[spec])


def filter_names(
    ws: WorkSet,
    include: set[str] | None,
    exclude: set[str] | None,
    exclude_eval: dict[str, set[str]] | None,
) -> None:
    ident = ws.col("identity")
    if include:
        ws.mark(~isin(ident, include), STATUS_DROPPED, "not in include list")
    if exclude:
        ws.mark(isin(ident, exclude), STATUS_DROPPED, "in exclude list")
    for name, names in (exclude_eval or {}).items():
        ws.mark(isin(ident, names), STATUS_DROPPED, f"evaluation identity ({name})")


def _per_identity(ws: WorkSet) -> dict[str, np.ndarray]:
    ident = ws.col("identity")
    groups: dict[str, list[int]] = defaultdict(list)
    for i in np.flatnonzero(ws.pending):
        groups[ident[i]].append(i)
    return {k: np.asarray(v) for k, v in sorted(groups.items())}


def _blank(ws: WorkSet) -> tuple[np.ndarray, np.ndarray]:
    n = len(ws.status)
    return np.zeros(n, bool), np.full(n, None, dtype=object)


def filter_min_images(ws: WorkSet, min_images: int, stage: str = "") -> None:
    if min_images <= 1:
        return
    m, reason = _blank(ws)
    for ident, idx in _per_identity(ws).items():
        if len(idx) < min_images:
            m[idx] = True
            reason[idx] = f"identity has fewer than min_images ({len(idx)} < {min_images}{stage})"
    ws.mark(m, STATUS_DROPPED, reason)


def filter_max_images(ws: WorkSet, max_images: int | None, seed: int) -> None:
    """Keep a seeded random ``max_images`` of each larger identity (first-N would favour
    whatever the source sorts first, e.g. one photo session)."""
    if not max_images:
        return
    m, _ = _blank(ws)
    for ident, idx in _per_identity(ws).items():
        if len(idx) > max_images:
            rng = np.random.default_rng([seed, stable_hash(ident)])
            m[rng.permutation(idx)[max_images:]] = True
    ws.mark(m, STATUS_DROPPED, f"over max_images ({max_images}) for identity")


def filter_max_identities(ws: WorkSet, max_identities: int | None) -> None:
    if not max_identities:
        return
    names = list(_per_identity(ws))
    if len(names) > max_identities:
        ident = ws.col("identity")
        ws.mark(isin(ident, names[max_identities:]), STATUS_DROPPED, f"beyond max_identities ({max_identities})")


def filter_duplicates(ws: WorkSet, phashes: np.ndarray, threshold: int) -> None:
    keys = ws.col("key")
    reason = np.full(len(ws.status), None, dtype=object)
    m = np.zeros(len(ws.status), bool)
    for ident, idx in _per_identity(ws).items():
        if len(idx) < 2:
            continue
        valid = [i for i in idx if phashes[i] is not None]
        for i, (j, d) in near_duplicates(np.array([phashes[k] for k in valid], dtype=np.int64), threshold).items():
            r = valid[i]
            m[r] = True
            reason[r] = f"near-duplicate of {keys[valid[j]]} (hamming {d})"
    ws.mark(m, STATUS_DROPPED, reason)


def filter_min_masked(ws: WorkSet, min_masked: int, ratio: float) -> None:
    """Keep identities whose masked share at ``ratio`` is at least ``min_masked`` images.

    With the plan's largest-remainder allocation an identity of ``n`` images gets
    ``floor(ratio*n)`` or one more, so requiring ``floor(ratio*n) >= K`` guarantees K."""
    if min_masked <= 0:
        return
    m, reason = _blank(ws)
    for ident, idx in _per_identity(ws).items():
        got = int(np.floor(ratio * len(idx) + 1e-9))
        if got < min_masked:
            m[idx] = True
            reason[idx] = f"identity keeps fewer than min_masked masked images ({got} < {min_masked})"
    ws.mark(m, STATUS_DROPPED, reason)


ALREADY_MASKED = "source image is already masked and has no original"


def drop_scan_errors(ws: WorkSet) -> None:
    """Rows the scan could not use: unreadable entries fail, already-masked ones are dropped."""
    from maskgen.datasets.sources import DROPPED_REASONS  # hidden files, images above the identity level

    drop = ws.col("_drop")
    ws.mark(np.array([d in DROPPED_REASONS for d in drop], dtype=bool), STATUS_DROPPED, drop)
    ws.mark(np.array([d is not None for d in drop], dtype=bool), STATUS_FAILED, drop)


def stable_hash(s: str) -> int:
    """A process-independent 63-bit hash (Python's ``hash`` is salted per process)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") >> 1
