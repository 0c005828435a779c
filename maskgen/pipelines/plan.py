"""The plan: which samples are masked, with what, and in which shard — all from the seed.

The masked count is exact: ``ratio * N`` rounded half up over the N output samples (the one
rule of :mod:`maskgen.allocation`, shared with the audit). It is spread by a
largest-remainder allocation, first over demographic groups (when labels exist), then over
the identities inside each group, so every group and every identity gets ``floor`` or
``ceil`` of its share; ties between equal remainders are broken by seeded random priorities,
so a thousand one-image identities at ratio 0.1 give exactly a hundred masked ones, chosen
reproducibly. Per-sample draws (which images, which mask) use a generator seeded by
``(seed, key)``, so a sample's mask does not change when other samples are filtered out.

Everything here works on *cells* (one per group x identity: its size) and on global sample
ranks, never on per-sample Python objects: the driver allocates counts per cell
(O(identities)); a partition task picks which samples of its cells are masked and computes
each sample's shard from its rank with a seeded permutation (:func:`permute`), so no global
sort of the samples is ever needed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from maskgen.allocation import largest_remainder, masked_count, tie_rng

ORDER_ROUNDS = 6  # Feistel rounds of the shard shuffle
EXPLICIT_ORDER = 1 << 22  # up to this many samples the shuffle is an explicit seeded permutation


def key_seed(seed: int, key: str) -> int:
    """A per-sample 63-bit seed, the same in every process and on every machine."""
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


def key_seeds(seed: int, keys: Sequence[str], prefix: str = "") -> np.ndarray:
    """:func:`key_seed` of ``prefix + key`` for many keys, as int64."""
    return np.fromiter((key_seed(seed, prefix + k) for k in keys), dtype=np.int64, count=len(keys))


def allocate_cells(cell_group: np.ndarray, cell_size: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Masked count per cell. Cells are (group, identity) pairs given in order: groups by
    their sort rank ``cell_group`` (int, ascending = the order groups are served), identities
    in key order inside a group. Exact overall; floor/ceil of its share per group, and per
    identity inside its group."""
    cell_group = np.asarray(cell_group)
    if cell_group.dtype.kind not in "iu":  # any integer type (one group: a byte per cell)
        cell_group = cell_group.astype(np.int64)
    cell_size = np.asarray(cell_size, dtype=np.int64)
    n = int(cell_size.sum())
    if n == 0 or ratio <= 0:
        return np.zeros(len(cell_size), dtype=np.int64)
    if ratio >= 1:
        return cell_size.copy()
    total = masked_count(n, ratio)
    rng = tie_rng(seed)  # one stream for tie-breaking, shared with the audit's target
    # cells in group order already (the build gives them so): slices, no index arrays
    # (the stable sort of a sorted array is the identity; same result, less memory)
    in_order = bool(np.all(cell_group[1:] >= cell_group[:-1]))
    order = None if in_order else np.argsort(cell_group, kind="stable")
    g_sorted = cell_group if in_order else cell_group[order]
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    ends = np.r_[starts[1:], len(g_sorted)]
    sizes_sorted = cell_size if in_order else cell_size[order]
    gsizes = np.add.reduceat(sizes_sorted, starts).astype(np.float64) if len(g_sorted) else np.zeros(0)
    del g_sorted, sizes_sorted
    gtotals = largest_remainder(gsizes * total / n, total, rng)
    out = None
    for a, b, size, m_g in zip(starts, ends, gsizes, gtotals):
        if m_g == 0:
            continue
        idx = slice(a, b) if in_order else order[a:b]
        counts = largest_remainder(cell_size[idx] * (m_g / size), int(m_g), rng)
        if in_order and a == 0 and b == len(cell_size):
            return counts  # one group holds every cell: its counts are the result
        if out is None:
            out = np.zeros(len(cell_size), dtype=np.int64)
        out[idx] = counts
    return out if out is not None else np.zeros(len(cell_size), dtype=np.int64)


def pick_in_cell(seed: int, first_key: str, size: int, m: int) -> np.ndarray:
    """Which of a cell's ``size`` samples (in key order) are masked: ``m`` of them, from a
    generator seeded by the cell's first key (stable when other cells change)."""
    sel = np.zeros(size, dtype=bool)
    if m:
        sel[np.random.default_rng(key_seed(seed, first_key)).permutation(size)[:m]] = True
    return sel


def allocate_masked(
    keys: Sequence[str],
    identities: Sequence[str],
    ratio: float,
    seed: int,
    groups: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Boolean ``masked`` per sample: exact overall, spread per group, then per identity.
    (The build does the same per partition; this form serves small in-memory uses.)"""
    n = len(keys)
    masked = np.zeros(n, dtype=bool)
    if n == 0:
        return masked
    grp = [None] * n if groups is None else list(groups)
    gnames = sorted(set(grp), key=group_sort_key)
    grank = {g: i for i, g in enumerate(gnames)}
    cells: dict[tuple[int, str], list[int]] = {}
    for i in sorted(range(n), key=lambda i: (grank[grp[i]], identities[i], keys[i])):
        cells.setdefault((grank[grp[i]], identities[i]), []).append(i)
    cell_list = list(cells.items())
    m = allocate_cells(np.array([c[0][0] for c in cell_list]), np.array([len(c[1]) for c in cell_list]), ratio, seed)
    for (_, idx), m_i in zip(cell_list, m):
        masked[np.asarray(idx)[pick_in_cell(seed, keys[idx[0]], len(idx), int(m_i))]] = True
    return masked


def group_sort_key(g: str | None) -> tuple[bool, str]:
    """Groups are served in this order (no-label group last)."""
    return (g is None, str(g))


# ---- shard order: a seeded permutation of ranks (no global sort) ----

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fast, well-mixing function of uint64 (vectorized)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def permute(ranks: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded bijection of ``[0, n)`` applied to ``ranks``: an explicit seeded permutation
    up to ``EXPLICIT_ORDER`` samples, beyond a Feistel network on the smallest even bit width
    covering ``n``, cycle-walking values that land outside (no table of ``n`` entries).
    Any task computes the shuffled position of its own samples from their global ranks."""
    if n <= EXPLICIT_ORDER:  # small enough for every task to hold the whole permutation
        perm = np.random.default_rng([seed, 0x6F72646572]).permutation(int(n))
        return perm[np.asarray(ranks, dtype=np.int64)]
    x = np.asarray(ranks, dtype=np.uint64).copy()
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = [np.uint64(key_seed(seed, f"shard-order:{r}") & 0xFFFFFFFFFFFFFFFF) for r in range(ORDER_ROUNDS)]
    todo = np.ones(len(x), dtype=bool)
    with np.errstate(over="ignore"):
        while todo.any():
            v = x[todo]
            left, right = v >> np.uint64(half), v & mask
            for k in keys:
                left, right = right, left ^ (_mix(right ^ k) & mask)
            v = (left << np.uint64(half)) | right
            x[todo] = v
            todo[todo] = v >= np.uint64(n)
    return x.astype(np.int64)


def shard_of(ranks: np.ndarray, n: int, seed: int, shuffle: bool, per_shard: int) -> np.ndarray:
    """The shard index of samples by global rank in key order: a seeded shuffle mixes
    identities across shards (a streaming trainer's shuffle buffer then sees many); else
    shards are cut in key order."""
    pos = permute(ranks, n, seed) if shuffle else np.asarray(ranks, dtype=np.int64)
    return (pos // int(per_shard)).astype(np.int32)


def num_shards(n: int, per_shard: int) -> int:
    return -(-int(n) // int(per_shard))


def shard_name(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


def brace_pattern(name: str, n_shards: int) -> str:
    if n_shards <= 1:
        return shard_name(name, 0)
    return f"{name}-{{{0:06d}..{n_shards - 1:06d}}}.tar"


# ---- plan hash of a shard from its rows, combined across partitions ----


def row_digests(parts: Sequence[bytes]) -> np.ndarray:
    """Two uint64 lanes per row (blake2b of its plan fields): summed per shard, they give a
    plan hash independent of which partition contributed which row."""
    buf = b"".join(hashlib.blake2b(p, digest_size=16).digest() for p in parts)
    return np.frombuffer(buf, dtype="<u8").reshape(-1, 2) if parts else np.zeros((0, 2), np.uint64)


def add_lanes(acc: np.ndarray, shard: np.ndarray, lanes: np.ndarray) -> None:
    """``acc[shard] += lanes`` modulo 2**64 (uint64 wraps)."""
    with np.errstate(over="ignore"):
        np.add.at(acc, shard, lanes.astype(np.uint64))


def shard_hash(head: str, count: int, lanes: np.ndarray) -> str:
    h = hashlib.blake2b(head.encode(), digest_size=8)
    h.update(int(count).to_bytes(8, "little"))
    h.update(np.asarray(lanes, dtype="<u8").tobytes())
    return h.hexdigest()
