"""Slices beyond one attribute at a time: intersections of two attributes, the mask mix per
group, and the skin-tone estimate checked against labels and brightness.

A dataset can be balanced by race and by gender and still hold few women of one race; a mask
type can follow a group even when the masked share does not; and a skin-tone estimate from
photographs can follow the lighting more than the skin. Each function returns plain,
rounded dicts for ``stats.json`` (same input, same bytes).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from maskgen.datasets.attributes import SKIN_TONES
from maskgen.audit.metrics import (
    MIN_GROUP_FOR_RATES,
    UNKNOWN,
    failure_rate_by_group,
    group_labels,
    mask_ratio_by_group,
    ordered_groups,
    r6,
)

CROSS = " × "  # joins the two groups of an intersection cell
MAX_PAIRS = 4
MAX_CELLS = 120  # an intersection with more cells is left out (too sparse to read)
GENDER_COLUMNS = ("gender", "sex")
# Mask mix per group: warn when a group's share of one mask type or wear mode is this far
# from the overall share, and a chi-square test of independence gives p below MIX_P_ALERT.
MIX_TOLERANCE = 0.10
MIX_P_ALERT = 1e-3
BRIGHTNESS_FOR_CHECK = ([-np.inf, 70.0, 110.0, 160.0, np.inf],
                        ["dark <70", "dim 70-110", "normal 110-160", "bright ≥160"])


def intersection_pairs(demo: list[str]) -> list[tuple[str, str]]:
    """Which pairs to cross: every attribute with gender when there is a gender column
    (race × gender, age × gender, skin tone × gender), else consecutive attributes."""
    g = next((c for c in demo if c in GENDER_COLUMNS), None)
    if g is not None:
        pairs = [(c, g) for c in demo if c != g]
    else:
        pairs = [(a, b) for i, a in enumerate(demo) for b in demo[i + 1:]]
    return pairs[:MAX_PAIRS]


def _cell_labels(df: pd.DataFrame, a: str, b: str) -> pd.Series:
    la, lb = group_labels(df[a]), group_labels(df[b])
    return la + CROSS + lb


def intersection(df: pd.DataFrame, ok: pd.DataFrame, attempted: pd.DataFrame,
                 failed: pd.Series, a: str, b: str, orders: dict) -> dict | None:
    """Counts, shares, masked share and failure rate of every cell of ``a × b``."""
    rows = [g for g in ordered_groups(group_labels(df[a]), orders.get(a)) if g != UNKNOWN]
    cols = [g for g in ordered_groups(group_labels(df[b]), orders.get(b)) if g != UNKNOWN]
    if not rows or not cols or len(rows) * len(cols) > MAX_CELLS:
        return None
    cells = [r + CROSS + c for r in rows for c in cols]
    lab_ok = _cell_labels(ok, a, b)
    counts = lab_ok.value_counts()
    known = int(sum(int(counts.get(c, 0)) for c in cells))
    out: dict = {"columns": [a, b], "rows": rows, "cols": cols,
                 "count": [[int(counts.get(r + CROSS + c, 0)) for c in cols] for r in rows]}
    out["share"] = [[r6(v / known) if known else None for v in row] for row in out["count"]]
    name = f"{a} × {b}"
    if "masked" in ok.columns and ok["masked"].notna().any():
        mr = mask_ratio_by_group(lab_ok, ok["masked"], cells, name=name)
        by = {g["group"]: g for g in mr["groups"]}
        out["masked_ratio"] = [[by.get(r + CROSS + c, {}).get("ratio") for c in cols]
                               for r in rows]
        out["mask_ratio_warnings"] = mr["warnings"]
    if len(attempted):
        fr = failure_rate_by_group(_cell_labels(attempted, a, b), failed, cells, name=name)
        by = {g["group"]: g for g in fr["groups"]}
        out["attempted"] = [[by.get(r + CROSS + c, {}).get("attempted", 0) for c in cols]
                            for r in rows]
        out["failure_rate"] = [[by.get(r + CROSS + c, {}).get("rate") for c in cols]
                               for r in rows]
        out["failure_warnings"] = fr["warnings"]
    small = sum(1 for row in out["count"] for v in row if v < MIN_GROUP_FOR_RATES)
    out["cells_under_min"] = small
    return out


def chi2_independence_p(counts: np.ndarray) -> float:
    """p-value of Pearson's chi-square test of independence of a contingency table, with
    Yates' continuity correction when it has one degree of freedom (as
    ``scipy.stats.chi2_contingency`` computes it; the survival function is the one
    ``scipy.stats.chi2.sf`` calls, without importing ``scipy.stats``: a second of a build's
    report)."""
    from scipy.special import chdtrc

    obs = np.asarray(counts, np.float64)
    expected = np.outer(obs.sum(axis=1), obs.sum(axis=0)) / obs.sum()
    dof = (obs.shape[0] - 1) * (obs.shape[1] - 1)
    if dof == 0:
        return 1.0
    if dof == 1:  # Yates: move each count half a unit toward its expectation (not past it)
        diff = expected - obs
        obs = obs + np.sign(diff) * np.minimum(0.5, np.abs(diff))
    stat = float(((obs - expected) ** 2 / expected).sum())
    return float(chdtrc(dof, stat))


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's on average ranks (ties share their mean rank)."""
    rx = pd.Series(x).rank(method="average").to_numpy(np.float64, copy=True)
    ry = pd.Series(y).rank(method="average").to_numpy(np.float64, copy=True)
    rx -= rx.mean()
    ry -= ry.mean()
    den = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def mask_mix_by_group(ok: pd.DataFrame, col: str, order: list[str] | None) -> dict:
    """Mask type and wear mode among the masked images of each group, and whether they
    depend on the group (chi-square test of independence)."""
    m = ok[ok["masked"].fillna(False).astype(bool)] if "masked" in ok.columns else ok.iloc[:0]
    out: dict = {}
    for what in ("mask_type", "wear"):
        if what not in m.columns or not m[what].notna().any():
            continue
        g = group_labels(m[col])
        v = group_labels(m[what])
        groups = [x for x in ordered_groups(g, order) if x != UNKNOWN]
        values = ordered_groups(v)
        tab = pd.crosstab(g, v).reindex(index=groups, columns=values, fill_value=0)
        counts = tab.to_numpy(dtype=np.int64)
        overall = counts.sum(axis=0) / max(int(counts.sum()), 1)
        entry: dict = {"groups": groups, "values": values, "counts": counts.tolist()}
        big = counts.sum(axis=1) >= MIN_GROUP_FOR_RATES
        p = None
        gap = None
        if big.sum() >= 2 and len(values) >= 2:
            sub = counts[big]
            sub = sub[:, sub.sum(axis=0) > 0]
            if sub.shape[1] >= 2:
                p = chi2_independence_p(sub)
            shares = counts[big] / counts[big].sum(axis=1, keepdims=True)
            dev = np.abs(shares - overall)
            i, j = np.unravel_index(int(np.argmax(dev)), dev.shape)
            gap = {"group": [gg for gg, b in zip(groups, big) if b][i], "value": values[j],
                   "share": r6(shares[i, j]), "overall": r6(overall[j])}
        entry["chi2_p"] = r6(p) if p is not None else None
        entry["largest_gap"] = gap
        entry["warnings"] = []
        if (p is not None and p < MIX_P_ALERT and gap is not None
                and abs(gap["share"] - gap["overall"]) > MIX_TOLERANCE):
            entry["warnings"].append(
                f"{what.replace('_', ' ')} depends on {col}: {gap['value']!r} is "
                f"{gap['share']:.1%} of the masks of {col} = {gap['group']!r} vs "
                f"{gap['overall']:.1%} overall (chi-square p = {p:.1e})")
        out[what] = entry
    return out


def _crosstab_tones(groups: pd.Series, tones: pd.Series, order: list[str]) -> dict:
    g = [x for x in order if x != UNKNOWN]
    tab = pd.crosstab(groups, tones).reindex(index=g, columns=SKIN_TONES, fill_value=0)
    counts = tab.to_numpy(dtype=np.int64)
    n = counts.sum(axis=1, keepdims=True)
    share = np.where(n > 0, counts / np.maximum(n, 1), np.nan)
    return {"groups": g, "tones": list(SKIN_TONES), "counts": counts.tolist(),
            "share": [[r6(x) for x in row] for row in share]}


def skin_tone_check(ok: pd.DataFrame, demo: list[str], orders: dict) -> dict | None:
    """ITA bins cross-tabulated with each label column and with face brightness, and how much
    of the ITA follows brightness (Spearman) -- what to trust in the skin-tone bars."""
    if "ita" not in ok.columns or not ok["ita"].notna().any():
        return None
    ita = pd.to_numeric(ok["ita"], errors="coerce")
    tones = group_labels(ok["skin_tone"])
    out: dict = {"measured": int(ita.notna().sum())}
    if "_ita_raw" in ok.columns and ok["_ita_raw"].notna().any():
        from maskgen.datasets.attributes import skin_tone_label

        raw = pd.to_numeric(ok["_ita_raw"], errors="coerce")
        raw_tone = raw.map(lambda v: skin_tone_label(float(v)) if pd.notna(v) else None)
        out["uncorrected_share"] = {t: r6(float((raw_tone == t).mean())) for t in SKIN_TONES}
        out["corrected_share"] = {t: r6(float((tones == t).mean())) for t in SKIN_TONES}
    if "_white_corrected" in ok.columns and ok["_white_corrected"].notna().any():
        out["white_reference_share"] = r6(float(ok["_white_corrected"].fillna(False)
                                                .astype(bool).mean()))
    if "brightness" in ok.columns and ok["brightness"].notna().any():
        from maskgen.audit.metrics import bin_values

        bri = pd.to_numeric(ok["brightness"], errors="coerce")
        both = ita.notna() & bri.notna()
        if both.sum() >= 10:
            rho = spearman_rho(ita[both].to_numpy(np.float64), bri[both].to_numpy(np.float64))
            out["spearman_ita_brightness"] = r6(rho) if math.isfinite(rho) else None
        edges, labels = BRIGHTNESS_FOR_CHECK
        out["by_brightness"] = _crosstab_tones(bin_values(bri, edges, labels), tones, labels)
    out["by_label"] = {}
    for col in demo:
        if col == "skin_tone" or col not in ok.columns:
            continue
        g = group_labels(ok[col])
        entry = _crosstab_tones(g, tones, ordered_groups(g, orders.get(col)))
        entry["median_ita"] = [r6(float(ita[g == x].median())) if (g == x).any() else None
                               for x in entry["groups"]]
        out["by_label"][col] = entry
    return out
