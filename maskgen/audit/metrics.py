"""Balance metrics: group shares against a target, entropy, mask ratio and failure rate per group.

Pure functions over pandas objects; they return plain dicts (JSON-ready, floats rounded) so the
stats file is byte-stable across runs. Warnings are sentences an auditor can act on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

UNKNOWN = "(unknown)"
# A group is under-represented when its share falls below this fraction of its target share.
UNDER_REPRESENTED = 0.5
# A group's mask ratio differs when it is this far from the overall ratio in absolute terms and
# statistically (|z| above Z_ALERT under a binomial model with the overall ratio).
MASK_RATIO_TOLERANCE = 0.02
# A group fails more when its failure rate is this many times the overall one, at least
# FAILURE_RATE_TOLERANCE above it, and z > Z_ALERT.
FAILURE_RATE_FACTOR = 1.25
FAILURE_RATE_TOLERANCE = 0.02
Z_ALERT = 3.0
MIN_GROUP_FOR_RATES = 20  # smaller groups are reported but never warned about (too noisy)


def r6(x: float | int | None) -> float | None:
    """Round for the stats file: stable text, no float noise; NaN/inf become None (JSON null)."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return round(x, 6)


def group_labels(values: pd.Series) -> pd.Series:
    """Values as group labels: strings, missing ones as ``(unknown)``."""
    out = values.astype("object").where(values.notna(), UNKNOWN)
    return out.map(lambda v: v if isinstance(v, str) else str(v))


def ordered_groups(labels: pd.Series, order: list[str] | None = None) -> list[str]:
    """Groups in a stable order: the given order first, then the rest sorted; unknown last."""
    present = set(labels.unique())
    head = [g for g in (order or []) if g in present]
    rest = sorted(g for g in present if g not in head and g != UNKNOWN)
    tail = [UNKNOWN] if UNKNOWN in present else []
    return head + rest + tail


def normalized_entropy(counts: np.ndarray) -> float:
    """Shannon entropy of the shares divided by log(K): 1 = perfectly even, 0 = one group."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    if c.size <= 1:
        return 0.0 if c.size == 1 else float("nan")
    p = c / c.sum()
    return float(-(p * np.log(p)).sum() / math.log(c.size))


def resolve_target(groups: list[str], target: Mapping[str, float] | None) -> dict[str, float]:
    """Target shares over ``groups`` (unknown excluded): uniform, or the given shares normalized."""
    known = [g for g in groups if g != UNKNOWN]
    if not known:
        return {}
    if not target:
        return {g: 1.0 / len(known) for g in known}
    raw = {g: float(target.get(g, 0.0)) for g in known}
    extra = sorted(set(target) - set(known))
    total = sum(raw.values()) + sum(float(target[g]) for g in extra)
    if total <= 0:
        raise ValueError("target shares must sum to a positive number")
    return {g: v / total for g, v in raw.items()}


def share_balance(
    labels: pd.Series,
    target: Mapping[str, float] | None = None,
    order: list[str] | None = None,
    name: str = "",
    warn: bool = True,
) -> dict:
    """Counts and shares of each group vs a target; min/max share ratio; normalized entropy.

    Shares and the target exclude rows whose value is unknown (reported as their own count), so
    a column missing for some rows does not masquerade as an under-represented group.
    """
    groups = ordered_groups(labels, order)
    counts = labels.value_counts()
    known = [g for g in groups if g != UNKNOWN]
    n_known = int(sum(int(counts.get(g, 0)) for g in known))
    tgt = resolve_target(groups, target)
    if target:
        # groups named in the target but absent from the data are the worst under-representation
        for g in sorted(set(target) - set(groups)):
            if float(target[g]) > 0:
                known.append(g)
        tgt = resolve_target(known, target)
    rows, warnings = [], []
    for g in known + ([UNKNOWN] if UNKNOWN in groups else []):
        n = int(counts.get(g, 0))
        share = n / n_known if (g != UNKNOWN and n_known) else None
        t = tgt.get(g)
        rows.append({
            "group": g,
            "count": n,
            "share": r6(share),
            "target": r6(t),
            "share_to_target": r6(share / t) if (share is not None and t) else None,
        })
        if warn and g != UNKNOWN and t and share is not None and share < UNDER_REPRESENTED * t:
            warnings.append(
                f"{name or 'group'} = {g!r} is under-represented: {share:.1%} of images "
                f"({n}) vs a target of {t:.1%}"
            )
    known_counts = np.array([int(counts.get(g, 0)) for g in known], dtype=np.float64)
    nz = known_counts[known_counts > 0]
    return {
        "groups": rows,
        "known": n_known,
        "unknown": int(counts.get(UNKNOWN, 0)),
        "num_groups": int(len(nz)),
        "min_max_share_ratio": r6(nz.min() / nz.max()) if nz.size else None,
        "normalized_entropy": r6(normalized_entropy(known_counts)),
        "warnings": warnings,
    }


def _z(k: int, n: int, p: float) -> float:
    if n == 0 or p <= 0 or p >= 1:
        return 0.0
    return (k / n - p) / math.sqrt(p * (1 - p) / n)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); stable at 0 and 1."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def mask_ratio_by_group(labels: pd.Series, masked: pd.Series, order: list[str] | None = None,
                        name: str = "") -> dict:
    """Masked share of each group among kept images, with its spread and 95% interval.

    The build plans an exact ratio per group when asked to; otherwise a random draw leaves each
    group near the overall ratio, and a group far from it (beyond noise) is flagged.
    """
    m = masked.fillna(False).astype(bool).to_numpy()
    lab = labels.to_numpy()
    n_all = int(len(m))
    overall = float(m.mean()) if n_all else float("nan")
    rows, warnings, ratios = [], [], []
    for g in ordered_groups(labels, order):
        sel = lab == g
        n = int(sel.sum())
        k = int(m[sel].sum())
        ratio = k / n if n else float("nan")
        lo, hi = wilson(k, n)
        z = _z(k, n, overall)
        rows.append({"group": g, "images": n, "masked": k, "ratio": r6(ratio),
                     "ci95": [r6(lo), r6(hi)], "z": r6(z)})
        if g != UNKNOWN and n >= MIN_GROUP_FOR_RATES:
            ratios.append(ratio)
        if (g != UNKNOWN and n >= MIN_GROUP_FOR_RATES and abs(ratio - overall) > MASK_RATIO_TOLERANCE
                and abs(z) > Z_ALERT):
            warnings.append(
                f"{name or 'group'} = {g!r} is masked at a different rate: {ratio:.1%} "
                f"({k}/{n}) vs {overall:.1%} overall"
            )
    return {
        "overall": r6(overall),
        "groups": rows,
        "spread": r6(max(ratios) - min(ratios)) if ratios else None,
        "std": r6(float(np.std(ratios))) if ratios else None,
        "warnings": warnings,
    }


def failure_rate_by_group(labels: pd.Series, failed: pd.Series, order: list[str] | None = None,
                          name: str = "", what: str = "landmark failure") -> dict:
    """Share of attempted images that failed, per group (a detector that fails more on one
    group skews the kept data toward the others)."""
    f = failed.fillna(False).astype(bool).to_numpy()
    lab = labels.to_numpy()
    n_all = int(len(f))
    overall = float(f.mean()) if n_all else float("nan")
    rows, warnings = [], []
    for g in ordered_groups(labels, order):
        sel = lab == g
        n = int(sel.sum())
        k = int(f[sel].sum())
        rate = k / n if n else float("nan")
        lo, hi = wilson(k, n)
        z = _z(k, n, overall)
        rows.append({"group": g, "attempted": n, "failed": k, "rate": r6(rate),
                     "ci95": [r6(lo), r6(hi)], "z": r6(z)})
        if (g != UNKNOWN and n >= MIN_GROUP_FOR_RATES and overall > 0
                and rate > FAILURE_RATE_FACTOR * overall
                and rate - overall > FAILURE_RATE_TOLERANCE and z > Z_ALERT):
            warnings.append(
                f"{name or 'group'} = {g!r} has a higher {what} rate: {rate:.1%} ({k}/{n}) "
                f"vs {overall:.1%} overall"
            )
    known = [r["rate"] for r in rows
             if r["group"] != UNKNOWN and r["attempted"] >= MIN_GROUP_FOR_RATES]
    return {
        "overall": r6(overall),
        "groups": rows,
        "spread": r6(max(known) - min(known)) if known else None,
        "warnings": warnings,
    }


def numeric_summary(values: pd.Series) -> dict:
    """Count, mean and quantiles of a numeric column (NaN ignored)."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"count": 0}
    q = np.quantile(v, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    return {
        "count": int(v.size),
        "mean": r6(v.mean()),
        "std": r6(v.std()),
        "min": r6(q[0]), "p05": r6(q[1]), "p25": r6(q[2]), "median": r6(q[3]),
        "p75": r6(q[4]), "p95": r6(q[5]), "max": r6(q[6]),
    }


def bin_values(values: pd.Series, edges: list[float], labels: list[str]) -> pd.Series:
    """Bin a numeric column into labelled intervals [e_i, e_i+1); NaN -> unknown."""
    v = pd.to_numeric(values, errors="coerce")
    idx = np.searchsorted(np.asarray(edges[1:-1], dtype=np.float64), v.to_numpy(dtype=np.float64),
                          side="right")
    out = pd.Series(np.asarray(labels, dtype=object)[idx], index=values.index, dtype="object")
    return out.where(v.notna(), UNKNOWN)
