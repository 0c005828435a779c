"""Balance metrics and the rebalancing functions the build uses."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from maskgen.allocation import masked_count
from maskgen.audit.balance import (
    allocate,
    cap_per_group,
    cap_to_smallest,
    stratified_mask_plan,
)
from maskgen.audit.metrics import (
    UNKNOWN,
    bin_values,
    failure_rate_by_group,
    group_labels,
    mask_ratio_by_group,
    normalized_entropy,
    share_balance,
    wilson,
)


def test_share_balance_uniform_and_target():
    labels = pd.Series(["a"] * 60 + ["b"] * 30 + ["c"] * 10 + [None] * 5)
    res = share_balance(group_labels(labels), name="col")
    rows = {r["group"]: r for r in res["groups"]}
    assert rows["a"]["count"] == 60 and rows["c"]["share"] == pytest.approx(0.1)
    assert rows[UNKNOWN]["count"] == 5 and rows[UNKNOWN]["share"] is None
    assert res["known"] == 100 and res["unknown"] == 5
    assert res["min_max_share_ratio"] == pytest.approx(10 / 60, abs=1e-6)
    p = np.array([0.6, 0.3, 0.1])
    assert res["normalized_entropy"] == pytest.approx(-(p * np.log(p)).sum() / math.log(3), abs=1e-6)
    assert len(res["warnings"]) == 1 and "'c'" in res["warnings"][0]  # 10% < 0.5 * 33%
    # a target naming an absent group: that group is the worst under-represented
    res = share_balance(group_labels(labels), {"a": 0.5, "b": 0.25, "c": 0.15, "d": 0.1})
    rows = {r["group"]: r for r in res["groups"]}
    assert rows["d"]["count"] == 0 and rows["d"]["target"] == pytest.approx(0.1)
    assert any("'d'" in w for w in res["warnings"]) and not any("'c'" in w for w in res["warnings"])


def test_entropy_edges():
    assert normalized_entropy(np.array([5, 5, 5])) == pytest.approx(1.0)
    assert normalized_entropy(np.array([7, 0])) == 0.0


def test_mask_ratio_by_group_flags_a_skewed_group():
    rng = np.random.default_rng(0)
    n = 3000
    g = np.array(["x", "y", "z"])[rng.integers(0, 3, n)]
    masked = rng.random(n) < np.where(g == "z", 0.3, 0.1)
    res = mask_ratio_by_group(pd.Series(g), pd.Series(masked), name="grp")
    rows = {r["group"]: r for r in res["groups"]}
    for k in "xyz":
        sel = g == k
        assert rows[k]["images"] == sel.sum() and rows[k]["masked"] == masked[sel].sum()
        assert rows[k]["ratio"] == pytest.approx(masked[sel].mean(), abs=1e-6)
        lo, hi = rows[k]["ci95"]
        assert lo <= rows[k]["ratio"] <= hi
    assert res["overall"] == pytest.approx(masked.mean(), abs=1e-6)
    assert res["spread"] == pytest.approx(rows["z"]["ratio"] - min(rows["x"]["ratio"],
                                                                   rows["y"]["ratio"]), abs=1e-6)
    assert any("'z'" in w for w in res["warnings"])


def test_failure_rate_by_group():
    g = pd.Series(["a"] * 200 + ["b"] * 200)
    failed = pd.Series([False] * 190 + [True] * 10 + [False] * 140 + [True] * 60)
    res = failure_rate_by_group(g, failed, name="race")
    rows = {r["group"]: r for r in res["groups"]}
    assert rows["a"]["rate"] == pytest.approx(0.05) and rows["b"]["rate"] == pytest.approx(0.3)
    assert any("'b'" in w and "higher" in w for w in res["warnings"])
    # with a high overall rate, a large absolute gap is flagged although the ratio is modest
    g = pd.Series(["x"] * 700 + ["y"] * 4300)
    failed = pd.Series([True] * 250 + [False] * 450 + [True] * 1040 + [False] * 3260)
    res = failure_rate_by_group(g, failed)
    assert [w for w in res["warnings"] if "'x'" in w] and not [w for w in res["warnings"]
                                                            if "'y'" in w]
    # a small absolute gap on a rare failure is not flagged
    g = pd.Series(["p"] * 5000 + ["q"] * 5000)
    failed = pd.Series([True] * 60 + [False] * 4940 + [True] * 20 + [False] * 4980)
    assert failure_rate_by_group(g, failed)["warnings"] == []


def test_wilson_and_bins():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and 0 < hi < 0.35
    b = bin_values(pd.Series([-5.0, 0.0, 14.9, 15.0, np.nan, 100.0]), [-np.inf, 0.0, 15.0, np.inf],
                   ["neg", "low", "high"])
    assert list(b) == ["neg", "low", "low", "high", UNKNOWN, "high"]


def test_allocate_exact_total():
    counts = [7, 13, 101, 1, 0]
    for ratio in (0.0, 0.1, 0.33, 0.5, 1.0):
        k = allocate(counts, ratio)
        assert k.sum() == masked_count(sum(counts), ratio)  # the build's rule (half up)
        assert all(math.floor(c * ratio) <= x <= math.ceil(c * ratio) for c, x in zip(counts, k))
    assert allocate([5], 0.5).tolist() == [3]
    with pytest.raises(ValueError):
        allocate(counts, 1.5)


def test_stratified_mask_plan():
    rng = np.random.default_rng(1)
    groups = list(np.array(["A", "B", "C"])[rng.choice(3, 5000, p=[0.7, 0.2, 0.1])])
    groups[:5] = [None] * 5
    eligible = rng.random(5000) > 0.05
    plan = stratified_mask_plan(groups, 0.1, seed=7, eligible=eligible)
    assert not plan[~eligible].any()
    assert plan.sum() == masked_count(int(eligible.sum()), 0.1)
    g = np.array(["" if x is None else x for x in groups])
    for k in ("A", "B", "C"):
        sel = (g == k) & eligible
        assert abs(plan[sel].sum() - 0.1 * sel.sum()) <= 1
    again = stratified_mask_plan(groups, 0.1, seed=7, eligible=eligible)
    assert np.array_equal(plan, again)
    other = stratified_mask_plan(groups, 0.1, seed=8, eligible=eligible)
    assert not np.array_equal(plan, other)
    # a group's choice does not depend on the other groups being present
    only_c = [x if x == "C" else None for x in groups]
    plan_c = stratified_mask_plan(only_c, 0.1, seed=7, eligible=eligible & (g == "C"))
    sel_c = (g == "C") & eligible
    if plan[sel_c].sum() == plan_c[sel_c].sum():
        assert np.array_equal(plan[sel_c], plan_c[sel_c])


def test_cap_per_group():
    groups = ["a"] * 50 + ["b"] * 10 + ["c"] * 3
    keep = cap_per_group(groups, 8, seed=0)
    g = np.array(groups)
    assert keep[g == "a"].sum() == 8 and keep[g == "b"].sum() == 8 and keep[g == "c"].sum() == 3
    assert np.array_equal(keep, cap_per_group(groups, 8, seed=0))
    assert cap_to_smallest(groups) == 3 and cap_to_smallest(groups, 2.0) == 6
    eligible = np.ones(len(groups), bool)
    eligible[:45] = False
    keep = cap_per_group(groups, 8, seed=0, eligible=eligible)
    assert keep[:45].sum() == 0 and keep[45:50].sum() == 5
    with pytest.raises(ValueError):
        cap_per_group(groups, -1, seed=0)
