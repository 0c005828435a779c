"""The plan: which samples are masked, with what, and in which shard — all from the seed.

The masked count is exact: ``round(ratio * N)`` over the N output samples. It is spread by a
largest-remainder allocation, first over demographic groups (when labels exist), then over
the identities inside each group, so every group and every identity gets ``floor`` or
``ceil`` of its share; ties between equal remainders are broken by seeded random priorities,
so a thousand one-image identities at ratio 0.1 give exactly a hundred masked ones, chosen
reproducibly. Per-sample draws (which images, which mask) use a generator seeded by
``(seed, key)``, so a sample's mask does not change when other samples are filtered out.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def key_seed(seed: int, key: str) -> int:
    """A per-sample 63-bit seed, the same in every process and on every machine."""
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


def largest_remainder(quotas: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Integers ``n_i`` summing to ``total`` with ``floor(q_i) <= n_i <= ceil(q_i)``
    (Hamilton's method), equal remainders broken by a seeded random priority."""
    quotas = np.asarray(quotas, dtype=np.float64)
    base = np.floor(quotas + 1e-9).astype(np.int64)
    left = int(total - base.sum())
    if left < 0 or left > len(quotas):
        raise ValueError("quotas do not sum to the total")
    if left:
        frac = quotas - base
        prio = rng.random(len(quotas))
        order = np.lexsort((prio, -np.round(frac, 9)))  # largest remainder first
        base[order[:left]] += 1
    return base


def masked_count(n: int, ratio: float) -> int:
    """The exact masked count for ``n`` samples (round half up)."""
    return int(np.floor(ratio * n + 0.5 + 1e-9))


def allocate_masked(
    keys: Sequence[str],
    identities: Sequence[str],
    ratio: float,
    seed: int,
    groups: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Boolean ``masked`` per sample: exact overall, spread per group, then per identity."""
    n = len(keys)
    masked = np.zeros(n, dtype=bool)
    if n == 0 or ratio <= 0:
        return masked
    if ratio >= 1:
        masked[:] = True
        return masked
    total = masked_count(n, ratio)
    rng = np.random.default_rng([seed, 0x6D61736B])  # one stream for tie-breaking
    grp = list(groups) if groups is not None else [None] * n
    by_group: dict[object, list[int]] = defaultdict(list)
    for i, g in enumerate(grp):
        by_group[g].append(i)
    gnames = sorted(by_group, key=lambda g: (g is None, str(g)))
    gsizes = np.array([len(by_group[g]) for g in gnames], dtype=np.float64)
    gtotals = largest_remainder(gsizes * ratio * total / (ratio * n), total, rng)
    for g, m_g in zip(gnames, gtotals):
        idx = by_group[g]
        if m_g == 0:
            continue
        by_id: dict[str, list[int]] = defaultdict(list)
        for i in idx:
            by_id[identities[i]].append(i)
        inames = sorted(by_id)
        isizes = np.array([len(by_id[k]) for k in inames], dtype=np.float64)
        itotals = largest_remainder(isizes * m_g / len(idx), int(m_g), rng)
        for name, m_i in zip(inames, itotals):
            if m_i == 0:
                continue
            cell = sorted(by_id[name], key=lambda i: keys[i])
            # which images of the identity: seeded by the identity's first key, so stable
            r = np.random.default_rng(key_seed(seed, keys[cell[0]]))
            for j in r.permutation(len(cell))[: int(m_i)]:
                masked[cell[j]] = True
    return masked


def shard_order(keys: Sequence[str], seed: int, shuffle: bool) -> list[int]:
    """The order samples are cut into shards: a seeded shuffle mixes identities across shards
    (a streaming trainer's shuffle buffer then sees many identities); else key order."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    if shuffle:
        order = sorted(order, key=lambda i: key_seed(seed, "order:" + keys[i]))
    return order


def split_shards(order: list[int], samples_per_shard: int) -> list[list[int]]:
    return [order[i : i + samples_per_shard] for i in range(0, len(order), samples_per_shard)]


def shard_name(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


def brace_pattern(name: str, n_shards: int) -> str:
    if n_shards <= 1:
        return shard_name(name, 0)
    return f"{name}-{{{0:06d}..{n_shards - 1:06d}}}.tar"
