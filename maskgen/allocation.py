"""How many of N samples to mask, and how to share that count among groups: one rule for the
build's plan and for the audit's rebalancing.

The rule:

- **The count is ``ratio * N`` rounded half up** (:func:`masked_count`): 5 images at 0.5 give
  3 masked, 7 give 4. Python's ``round()`` rounds half to even (5 -> 2 but 7 -> 4), so the same
  ratio would mask a larger or smaller share depending on N's parity; half up never masks less
  than the ratio asks when it falls exactly between. It is computed exactly on the decimal
  written (``0.7 * 45`` is ``31.499999999999996`` in floats, and 31.5 for this rule), at any N.
- **The count is shared by largest remainder** (Hamilton's method, :func:`largest_remainder`):
  every group gets the floor or the ceiling of its exact share ``count * size / N``, and the
  shares add up to the count exactly. Groups whose remainders are equal are ordered by a seeded
  random priority when a generator is given (no group is favoured by its name), else by their
  order.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

EPS = 1e-9  # float noise in a quota (0.7 * 45 = 31.499999999999996) is not a real remainder


def tie_rng(seed: int) -> np.random.Generator:
    """The one stream that breaks equal remainders between groups, for the build's plan and
    the audit's target alike (so they agree group by group, ties included)."""
    return np.random.default_rng([int(seed), 0x6D61736B])


def masked_count(n: int, ratio: float) -> int:
    """The masked count for ``n`` samples at ``ratio``: ``ratio * n`` rounded half up."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be within [0, 1], got {ratio}")
    # exact integer arithmetic on the decimal the user wrote (repr(0.1) == "0.1" -> 1/10), so
    # the half-up rule holds at any N (a float product drifts by more than EPS past ~1e8)
    q = Fraction(repr(float(ratio)))
    return int((2 * int(n) * q.numerator + q.denominator) // (2 * q.denominator))


def largest_remainder(quotas: Sequence[float] | np.ndarray, total: int,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """Integers ``n_i`` summing to ``total`` with ``floor(q_i) <= n_i <= ceil(q_i)``.

    Equal remainders are broken by a random priority drawn from ``rng`` (one draw per quota),
    or by index order without one."""
    quotas = np.asarray(quotas, dtype=np.float64)
    fl = quotas + EPS
    np.floor(fl, out=fl)
    base = fl.astype(np.int64)
    del fl
    left = int(total - base.sum())
    if left < 0 or left > len(quotas):
        raise ValueError("quotas do not sum to the total")
    if left:
        key = quotas - base  # the remainders, rounded: the largest get one more
        np.round(key, 9, out=key)
        prio = rng.random(len(quotas)) if rng is not None else np.arange(len(quotas), dtype=np.float64)
        base[_largest(key, prio, left)] += 1
    return base


def _largest(key: np.ndarray, prio: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``key`` values, equal keys by the smaller ``prio``, then
    the lower index: the first ``k`` of ``np.lexsort((prio, -key))``, without sorting all of
    them (a partition finds the k-th largest key; only the ties at it are sorted)."""
    n = len(key)
    if k >= n:
        return np.arange(n)
    kth = np.partition(key, n - k)[n - k]
    above = np.flatnonzero(key > kth)
    tied = np.flatnonzero(key == kth)
    pick = tied[np.argsort(prio[tied], kind="stable")[: k - len(above)]]
    return np.concatenate([above, pick])


def allocate(counts: Sequence[int], ratio: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """How many of each group to pick: ``masked_count(sum(counts), ratio)`` in all, shared by
    largest remainder (each group gets floor or ceil of ``ratio * count``, never more than its
    count)."""
    c = np.asarray(counts, dtype=np.int64)
    n = int(c.sum())
    total = masked_count(n, ratio)
    if n == 0 or total == 0:
        return np.zeros(len(c), dtype=np.int64)
    picks = largest_remainder(c * (total / n), total, rng)
    return np.minimum(picks, c)
