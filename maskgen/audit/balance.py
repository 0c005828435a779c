"""Rebalancing functions for the build: stratified mask plans and per-group caps.

Pure functions over a sequence of group labels (one per candidate image, in manifest order);
every random choice comes from ``seed``. Each group draws from its own generator, seeded from
the seed and the group's name, so a group's choice does not change when another group is added.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Sequence

import numpy as np

from maskgen.allocation import allocate, tie_rng  # the build's rule: ratio * N rounded half up, largest remainder


def _group_index(groups: Sequence[Hashable | None]) -> tuple[list[str], np.ndarray]:
    names = ["" if g is None else str(g) for g in groups]
    uniq = sorted(set(names))
    pos = {g: i for i, g in enumerate(uniq)}
    return uniq, np.fromiter((pos[g] for g in names), dtype=np.int64, count=len(names))


def _rng(seed: int, group: str, salt: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(f"{salt}:{group}".encode())])


def stratified_mask_plan(groups: Sequence[Hashable | None], ratio: float, seed: int,
                         eligible: Sequence[bool] | None = None) -> np.ndarray:
    """Which images to mask so that every group is masked at ``ratio`` (exact up to rounding;
    the total is the build's: :func:`maskgen.allocation.masked_count` of the eligible images).

    ``groups``: one label per image (e.g. the ``race`` column, or identity; None is its own
    group); ``eligible``: images that may be masked (e.g. status ok with landmarks) — the ratio
    applies within the eligible images of each group. Returns a bool array, True = mask.
    """
    uniq, idx = _group_index(groups)
    ok = np.ones(len(idx), bool) if eligible is None else np.asarray(eligible, dtype=bool)
    if ok.shape != idx.shape:
        raise ValueError("eligible must have one value per image")
    members = [np.flatnonzero((idx == i) & ok) for i in range(len(uniq))]
    # groups in the build's order (the no-label group last) and its tie-breaking stream, so a
    # tie between groups goes the same way as in the build's plan
    order = sorted(range(len(uniq)), key=lambda i: (uniq[i] == "", uniq[i]))
    picks = np.zeros(len(uniq), dtype=np.int64)
    picks[order] = allocate([len(members[i]) for i in order], ratio, tie_rng(seed))
    plan = np.zeros(len(idx), dtype=bool)
    for g, m, k in zip(uniq, members, picks):
        if k:
            plan[_rng(seed, g, "mask").choice(m, size=int(k), replace=False)] = True
    return plan


def cap_per_group(groups: Sequence[Hashable | None], cap: int, seed: int,
                  eligible: Sequence[bool] | None = None) -> np.ndarray:
    """Keep at most ``cap`` images of each group, chosen at random from the seed.

    Returns a bool array, True = keep. Ineligible images (already dropped) stay False and do
    not count toward the cap. Rows removed here get ``maskgen.datasets.filters.CAP_REASON`` in the manifest.
    """
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    uniq, idx = _group_index(groups)
    ok = np.ones(len(idx), bool) if eligible is None else np.asarray(eligible, dtype=bool)
    keep = np.zeros(len(idx), dtype=bool)
    for i, g in enumerate(uniq):
        m = np.flatnonzero((idx == i) & ok)
        if len(m) <= cap:
            keep[m] = True
        else:
            keep[np.sort(_rng(seed, g, "cap").choice(m, size=int(cap), replace=False))] = True
    return keep


def cap_to_smallest(groups: Sequence[Hashable | None], factor: float = 1.0,
                    eligible: Sequence[bool] | None = None) -> int:
    """A cap of ``factor`` times the smallest group's size (``factor=1`` equalizes groups)."""
    uniq, idx = _group_index(groups)
    ok = np.ones(len(idx), bool) if eligible is None else np.asarray(eligible, dtype=bool)
    sizes = np.bincount(idx[ok], minlength=len(uniq))
    sizes = sizes[sizes > 0]
    return int(np.floor(factor * sizes.min())) if sizes.size else 0
