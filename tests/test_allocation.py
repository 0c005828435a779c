"""maskgen.allocation: one masked-count rule (round half up) and one largest-remainder share."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from maskgen.allocation import allocate, largest_remainder, masked_count


@pytest.mark.parametrize(("n", "ratio", "expected"), [
    (5, 0.5, 3), (7, 0.5, 4), (4, 0.5, 2), (5, 0.3, 2), (25, 0.1, 3), (1000, 0.1, 100),
    (0, 0.5, 0), (3, 0.0, 0), (3, 1.0, 3), (1, 0.5, 1), (10, 0.05, 1), (10, 0.04, 0),
])
def test_masked_count_rounds_half_up(n: int, ratio: float, expected: int) -> None:
    assert masked_count(n, ratio) == expected


def test_masked_count_absorbs_float_error() -> None:
    assert 0.7 * 45 < 31.5  # 31.499999999999996
    assert masked_count(45, 0.7) == 32
    with pytest.raises(ValueError):
        masked_count(5, 1.5)


def test_largest_remainder_bounds_and_total() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(1, 12))
        sizes = rng.integers(0, 40, k)
        n = int(sizes.sum())
        if n == 0:
            continue
        total = masked_count(n, float(rng.random()))
        quotas = sizes * total / n
        got = largest_remainder(quotas, total, np.random.default_rng(1))
        assert got.sum() == total
        assert (got >= np.floor(quotas + 1e-9)).all() and (got <= np.ceil(quotas - 1e-9)).all()


def test_ties_seeded_or_in_order() -> None:
    quotas = np.full(6, 0.5)  # three of six equal remainders get the extra one
    in_order = largest_remainder(quotas, 3)
    assert in_order.tolist() == [1, 1, 1, 0, 0, 0]
    a = largest_remainder(quotas, 3, np.random.default_rng(7))
    b = largest_remainder(quotas, 3, np.random.default_rng(7))
    assert a.tolist() == b.tolist() and a.sum() == 3
    seen = {tuple(largest_remainder(quotas, 3, np.random.default_rng(s))) for s in range(20)}
    assert len(seen) > 1  # the seed, not the group's position, decides


def test_allocate_groups() -> None:
    assert allocate([5], 0.5).tolist() == [3]  # the case where round() gave 2
    picks = allocate([3, 3, 4], 0.5)
    assert picks.sum() == 5 and picks.tolist() == [2, 1, 2]  # 1.5, 1.5, 2.0 -> first tie wins
    assert allocate([0, 0], 0.5).tolist() == [0, 0]
    assert allocate([2, 1], 1.0).tolist() == [2, 1]
    assert allocate([10, 10], 0.0).tolist() == [0, 0]
    for counts in ([1] * 1000, [7, 0, 13, 1, 1]):
        p = allocate(counts, 0.1, np.random.default_rng(3))
        assert p.sum() == masked_count(sum(counts), 0.1) and (p <= np.asarray(counts)).all()


def _plan_rule_before(quotas, total, rng):
    """The build planner's largest remainder as it was before it moved here (frozen copy)."""
    quotas = np.asarray(quotas, dtype=np.float64)
    base = np.floor(quotas + 1e-9).astype(np.int64)
    left = int(total - base.sum())
    if left:
        frac = quotas - base
        prio = rng.random(len(quotas))
        order = np.lexsort((prio, -np.round(frac, 9)))
        base[order[:left]] += 1
    return base


def test_same_results_as_the_build_plan_before() -> None:
    """The build's planner uses this module, with the numbers (same rounding, same
    tie-breaking draws) of its own earlier code, so no shard changes."""
    from maskgen.pipelines import plan

    assert plan.masked_count is masked_count and plan.largest_remainder is largest_remainder
    rng = np.random.default_rng(11)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        ratio = float(rng.choice([0.1, 0.3, 0.5, rng.random()]))
        assert masked_count(n, ratio) == int(np.floor(ratio * n + 0.5 + 1e-9))
        sizes = rng.integers(1, 20, int(rng.integers(1, 10)))
        total = masked_count(int(sizes.sum()), ratio)
        quotas = sizes * total / sizes.sum()
        seed = int(rng.integers(0, 2**31))
        mine = largest_remainder(quotas, total, np.random.default_rng(seed))
        before = _plan_rule_before(quotas, total, np.random.default_rng(seed))
        assert mine.tolist() == before.tolist()


@pytest.mark.parametrize("seed", range(40))
def test_audit_target_agrees_with_the_build_plan(seed: int) -> None:
    """The audit's stratified target and the build's plan mask the same number of images in
    all (5 at 0.5: 3 in both), and the same number per group, ties between groups included."""
    from maskgen.audit import balance
    from maskgen.pipelines import plan

    assert balance.allocate is allocate
    assert balance.stratified_mask_plan(["a"] * 5, 0.5, seed=seed).sum() == 3
    assert plan.allocate_masked([f"k{i}" for i in range(5)], ["a"] * 5, 0.5, seed=seed).sum() == 3
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    ratio = float(rng.choice([0.1, 0.25, 0.5, round(float(rng.random()), 3)]))
    groups = [str(g) for g in rng.choice(["x", "y", "z"], n, p=[0.6, 0.3, 0.1])]
    keys = [f"{i:05d}" for i in range(n)]
    audit = balance.stratified_mask_plan(groups, ratio, seed=seed)
    build = plan.allocate_masked(keys, keys, ratio, seed=seed, groups=groups)  # one image per identity
    assert audit.sum() == build.sum() == masked_count(n, ratio)
    names = sorted(set(groups))
    size = np.array([groups.count(g) for g in names])
    quota = size * masked_count(n, ratio) / n
    for g, q in zip(names, quota):
        a = int(audit[np.array(groups) == g].sum())
        b = int(build[np.array(groups) == g].sum())
        assert np.floor(q + 1e-9) <= a <= np.ceil(q - 1e-9) and np.floor(q + 1e-9) <= b <= np.ceil(q - 1e-9)
    for g in names:  # the same tie-breaking stream and group order: equal group by group
        sel = np.array(groups) == g
        assert audit[sel].sum() == build[sel].sum()


def test_masked_count_is_exact_at_web_scale() -> None:
    """Half up on the decimal written, at sizes where a float product drifts past any fixed
    tolerance (WebFace42M-sized and beyond)."""
    assert masked_count(42_474_557, 0.1) == 4_247_456  # 4,247,455.7
    assert masked_count(10**12 + 5, 0.5) == 500_000_000_003  # ...002.5 rounds up
    assert masked_count(3 * 10**15, 0.3) == 9 * 10**14  # 0.3 * 3e15 is 899999999999999.9 in floats
    for n in (0, 1, 5, 7, 45, 1000, 13_233):
        for r in (0.0, 0.1, 0.25, 0.5, 0.7, 1.0):
            assert masked_count(n, r) == int(Fraction(str(r)) * n + Fraction(1, 2))


def test_largest_remainders_are_the_lexsort_first_k() -> None:
    """The partition-based pick is the first k of a stable lexsort by (remainder desc,
    priority asc, index): ties in the remainder and in the priority included."""
    from maskgen.allocation import _largest

    rng = np.random.default_rng(0)
    for t in range(600):
        n = int(rng.integers(1, 300))
        key = [np.round(rng.random(n), 9), rng.integers(0, 4, n) / 4.0, np.zeros(n)][t % 3]
        prio = rng.random(n) if t % 2 else np.arange(n, dtype=np.float64)
        if t % 5 == 0:
            prio = np.round(prio, 1)
        k = int(rng.integers(1, n + 1))
        got = _largest(key, prio, k)
        assert len(got) == k and set(got.tolist()) == set(np.lexsort((prio, -key))[:k].tolist())
