"""From a manifest table to the audit's stats: composition, masks, attributes, balance, warnings.

Everything is computed from manifest columns (see ``maskgen.datasets.manifest``): ``status``
tells kept (ok), filtered (dropped) and failed rows apart; extra string columns are demographic
labels. The result is a plain dict (the ``stats.json`` of a report), ordered and rounded so the
same manifest always gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from maskgen.datasets.attributes import SKIN_TONES, skin_tone_label
from maskgen.audit.metrics import (
    UNKNOWN,
    bin_values,
    failure_rate_by_group,
    group_labels,
    mask_ratio_by_group,
    numeric_summary,
    r6,
    share_balance,
)
from maskgen.audit.slices import (
    intersection,
    intersection_pairs,
    mask_mix_by_group,
    skin_tone_check,
)
from maskgen.datasets.manifest import CORE_NAMES

STATS_SCHEMA = "maskgen.audit.stats/2"
FIT_THRESHOLD = 0.5  # fit_score below this counts as a poor mask fit
DOMINANT_IDENTITY_SHARE = 0.02  # one identity above this share of images gets a warning
MAX_GROUPS = 50  # a label column with more distinct values is not a grouping column
MAX_VALUES = 16  # mask colours etc.: the most frequent values, the rest as "other"

# Condition bins: fixed edges so that reports of different builds compare.
YAW_EDGES = [0.0, 15.0, 30.0, 45.0, np.inf]
YAW_LABELS = ["frontal <15°", "15-30°", "30-45°", "≥45°"]
BRIGHTNESS_EDGES = [-np.inf, 70.0, 110.0, 160.0, np.inf]
BRIGHTNESS_LABELS = ["dark <70", "dim 70-110", "normal 110-160", "bright ≥160"]
# Sharpness: variance of the Laplacian of the face resampled to 96x96 (absolute scale).
# Calibrated on LFW and FairFace faces blurred at that scale (benchmarks/audit_sharpness.py):
# a Gaussian blur of sigma 2 px leaves a median of 8-9, sigma 1 px 32-34, originals 120-170.
SHARPNESS_EDGES = [-np.inf, 10.0, 40.0, np.inf]
SHARPNESS_LABELS = ["blurry <10", "soft 10-40", "sharp ≥40"]
FACE_SIZE_EDGES = [-np.inf, 20.0, 40.0, 80.0, np.inf]
FACE_SIZE_LABELS = ["<20 px", "20-40 px", "40-80 px", "≥80 px"]
IPI_EDGES = [1, 2, 3, 5, 10, 20, 50, 10**12]
IPI_LABELS = ["1", "2", "3-4", "5-9", "10-19", "20-49", "≥50"]
NUMERIC_COLUMNS = ["ita", "yaw", "pitch", "roll", "sharpness", "brightness", "face_size",
                   "fit_score", "width", "height"]
MASK_COLUMNS = ["mask_type", "mask_color", "mask_texture", "wear"]
# Label columns named like this come first, in this order.
DEMOGRAPHIC_ORDER = ["gender", "sex", "race", "ethnicity", "age"]
# Known value orders for readable tables (others sort alphabetically).
VALUE_ORDERS: dict[str, list[str]] = {
    "skin_tone": SKIN_TONES,
    "age": ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"],
    "yaw_bin": YAW_LABELS,
    "brightness_bin": BRIGHTNESS_LABELS,
    "face_size_bin": FACE_SIZE_LABELS,
    "sharpness_bin": SHARPNESS_LABELS,
}
# Defined only when landmarks were found: a failure rate per bin would be meaningless.
LANDMARK_ONLY = {"yaw_bin", "face_size_bin"}
CONDITION_TITLES = {
    "yaw_bin": "head yaw (absolute)",
    "sharpness_bin": "sharpness (Laplacian variance at 96 px)",
    "brightness_bin": "face brightness (luma)",
    "face_size_bin": "face size (inter-ocular distance)",
}


TITLES = {**CONDITION_TITLES, "skin_tone": "skin tone (ITA, Del Bino scale)"}


def label_columns(df: pd.DataFrame, max_groups: int = MAX_GROUPS) -> list[str]:
    """Extra (non-core) columns usable as groups: few distinct values, demographic names first."""
    cols = []
    for c in df.columns:
        if c in CORE_NAMES or c.startswith("_") or c in CONDITION_TITLES:
            continue
        s = df[c]
        if pd.api.types.is_float_dtype(s) or s.dropna().nunique() > max_groups:
            continue
        cols.append(c)
    head = [c for c in DEMOGRAPHIC_ORDER if c in cols]
    return head + sorted(c for c in cols if c not in head)


def _status(df: pd.DataFrame) -> pd.Series:
    return df["status"].astype("object").fillna("pending")


def derive_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Add the binned condition columns and fill ``skin_tone`` from ``ita`` where missing."""
    out = df.copy()
    if "ita" in out.columns:
        tone = out["skin_tone"] if "skin_tone" in out.columns else pd.Series(None, index=out.index)
        from_ita = pd.to_numeric(out["ita"], errors="coerce").map(
            lambda v: skin_tone_label(float(v)) if pd.notna(v) else None)
        out["skin_tone"] = tone.astype("object").where(tone.notna(), from_ita)
    if "yaw" in out.columns:
        out["yaw_bin"] = bin_values(pd.to_numeric(out["yaw"], errors="coerce").abs(), YAW_EDGES,
                                    YAW_LABELS)
    if "brightness" in out.columns:
        out["brightness_bin"] = bin_values(out["brightness"], BRIGHTNESS_EDGES, BRIGHTNESS_LABELS)
    if "face_size" in out.columns:
        out["face_size_bin"] = bin_values(out["face_size"], FACE_SIZE_EDGES, FACE_SIZE_LABELS)
    if "sharpness" in out.columns:
        out["sharpness_bin"] = bin_values(out["sharpness"], SHARPNESS_EDGES, SHARPNESS_LABELS)
    return out


def _has_values(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and bool(df[col].notna().any())


def _counts(s: pd.Series, order: list[str] | None = None) -> dict[str, int]:
    vc = group_labels(s).value_counts()
    keys = [k for k in (order or []) if k in vc.index]
    keys += sorted(k for k in vc.index if k not in keys and k != UNKNOWN)
    keys += [UNKNOWN] if UNKNOWN in vc.index else []
    return {k: int(vc[k]) for k in keys}


def _top(counts: dict[str, int], k: int = MAX_VALUES) -> dict[str, int]:
    """The ``k - 1`` most frequent values and the rest summed (random colours are many)."""
    if len(counts) <= k:
        return counts
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    head = dict(items[: k - 1])
    head[f"other ({len(items) - k + 1} values)"] = sum(v for _, v in items[k - 1:])
    return head


def images_per_identity(ok: pd.DataFrame) -> dict:
    per = ok.groupby("identity", sort=True).size()
    hist = bin_values(per.astype(float), IPI_EDGES, IPI_LABELS).value_counts()
    top = per.sort_values(ascending=False, kind="stable").head(10)
    return {
        "identities": int(per.size),
        "summary": numeric_summary(per.astype(float)),
        "histogram": {lab: int(hist.get(lab, 0)) for lab in IPI_LABELS},
        "top": [{"identity": str(k), "images": int(v)} for k, v in top.items()],
        "counts": per.to_numpy(),  # for the figure; removed before JSON
    }


def mask_per_identity(ok: pd.DataFrame) -> dict:
    """Masked share per identity (identities with at least two kept images)."""
    g = ok.assign(_m=ok["masked"].fillna(False).astype(bool)).groupby("identity", sort=True)["_m"]
    n, k = g.size(), g.sum()
    multi = n >= 2
    ratio = (k[multi] / n[multi]).astype(float)
    return {
        "identities_with_2plus": int(multi.sum()),
        "ratio": numeric_summary(ratio),
        "with_no_masked": int(((k == 0) & multi).sum()),
        "all_masked": int(((k == n) & multi).sum()),
        "ratios": ratio.to_numpy(),  # for the figure; removed before JSON
    }


def _parse_target(target: Mapping | None, col: str) -> Mapping[str, float] | None:
    if not target:
        return None
    t = target.get(col)
    return dict(t) if isinstance(t, Mapping) else None


def compute_stats(
    df: pd.DataFrame,
    *,
    group_by: list[str] | None = None,
    target: Mapping[str, Mapping[str, float]] | None = None,
    fit_threshold: float = FIT_THRESHOLD,
    source: Mapping | None = None,
) -> dict:
    """The audit of a manifest ``df`` (one row per input image).

    ``group_by``: demographic columns to slice by (default: every low-cardinality extra column,
    then ``skin_tone``); ``target``: per column, the wanted share of each group (uniform when
    absent). Returns the stats dict; keys starting with ``_`` hold arrays for the figures.
    """
    demo = list(group_by) if group_by is not None else label_columns(df)
    df = derive_columns(df)
    status = _status(df)
    ok = df[status == "ok"]
    attempted = df[status.isin(["ok", "failed"])]
    failed = status[status.isin(["ok", "failed"])] == "failed"
    reasons = df["reason"].astype("object") if "reason" in df.columns else pd.Series(
        None, index=df.index, dtype="object")
    warnings: list[str] = []

    # --- composition
    ipi = images_per_identity(ok)
    comp = {
        "rows": int(len(df)),
        "images": int(len(ok)),
        "dropped": int((status == "dropped").sum()),
        "failed": int((status == "failed").sum()),
        "pending": int((status == "pending").sum()),
        "identities_in_source": int(df["identity"].nunique()),
        "identities": ipi["identities"],
        "images_per_identity": {k: v for k, v in ipi.items() if k not in ("counts", "identities")},
        "drops_by_reason": _counts(reasons[status == "dropped"].fillna("unspecified")),
        "failures_by_reason": _counts(reasons[status == "failed"].fillna("unspecified")),
    }
    if ipi["top"] and len(ok):
        top = ipi["top"][0]
        share = top["images"] / len(ok)
        if share > DOMINANT_IDENTITY_SHARE and ipi["identities"] > 1:
            warnings.append(f"identity {top['identity']!r} holds {share:.1%} of the images "
                            f"({top['images']} of {len(ok)})")
    if len(attempted) and comp["failed"] / len(attempted) > 0.05:
        warnings.append(f"{comp['failed']} of {len(attempted)} attempted images failed "
                        f"({comp['failed'] / len(attempted):.1%}); see failures by reason")

    # --- masks
    has_mask = _has_values(df, "masked")
    masks: dict = {"available": has_mask}
    if has_mask and len(ok):
        m = ok["masked"].fillna(False).astype(bool)
        mk = ok[m]
        masks.update({
            "masked": int(m.sum()),
            "unmasked": int((~m).sum()),
            "ratio": r6(m.mean()),
            "per_identity": {k: v for k, v in mask_per_identity(ok).items() if k != "ratios"},
        })
        for c in MASK_COLUMNS:
            if c in mk.columns:  # a masked image without texture has a plain mask
                masks[c] = _top(_counts(mk[c].where(mk[c].notna(), "none")
                                        if c == "mask_texture" else mk[c]))
        if _has_values(mk, "fit_score"):
            fs = pd.to_numeric(mk["fit_score"], errors="coerce")
            masks["fit_score"] = numeric_summary(fs)
            masks["poor_fit"] = int((fs < fit_threshold).sum())
            masks["fit_threshold"] = fit_threshold

    # --- attributes
    if group_by is None and _has_values(df, "skin_tone") and "skin_tone" not in demo:
        demo.append("skin_tone")
    missing = [c for c in demo if c not in df.columns]
    if missing:
        raise ValueError(f"no column {missing} in the manifest; columns: {sorted(df.columns)}")
    conditions = [c for c in CONDITION_TITLES if _has_values(df, c.removesuffix("_bin"))]
    fit_attempt, fit_failed = _fit_outcome(df, status, reasons, fit_threshold)
    attrs: dict = {}
    for col in demo + conditions:
        kind = "condition" if col in conditions else "demographic"
        order = VALUE_ORDERS.get(col)
        entry: dict = {"kind": kind, "title": TITLES.get(col, col)}
        entry["balance"] = share_balance(group_labels(ok[col]), _parse_target(target, col),
                                         order, name=col, warn=kind == "demographic")
        if kind == "condition" and _parse_target(target, col) is None:
            for g in entry["balance"]["groups"]:  # no natural target for pose or quality
                g["target"] = g["share_to_target"] = None
        if has_mask and len(ok):
            entry["mask_ratio"] = mask_ratio_by_group(group_labels(ok[col]), ok["masked"], order,
                                                      name=col)
        if len(attempted) and col not in LANDMARK_ONLY:
            entry["failure_rate"] = failure_rate_by_group(group_labels(attempted[col]), failed,
                                                          order, name=col)
        if fit_attempt is not None and fit_attempt.any():
            sub = df[fit_attempt]
            entry["fit_failure_rate"] = failure_rate_by_group(
                group_labels(sub[col]), fit_failed[fit_attempt], order, name=col,
                what="mask-fit failure")
        for part in ("balance", "mask_ratio", "failure_rate", "fit_failure_rate"):
            warnings.extend(entry.get(part, {}).get("warnings", []))
        attrs[col] = entry

    # --- slices: intersections, mask mix per group, the skin-tone check
    demo_cols = [c for c in demo if c in attrs]
    intersections = {}
    for a, b in intersection_pairs(demo_cols):
        x = intersection(df, ok, attempted, failed, a, b, VALUE_ORDERS)
        if x is not None:
            intersections[f"{a} × {b}"] = x
            warnings.extend(x.get("mask_ratio_warnings", []) + x.get("failure_warnings", []))
    mix_by_group = {}
    if has_mask and len(ok):
        for col in demo_cols:
            e = mask_mix_by_group(ok, col, VALUE_ORDERS.get(col))
            if e:
                mix_by_group[col] = e
                for part in e.values():
                    warnings.extend(part["warnings"])
    tone_check = skin_tone_check(ok, demo_cols, VALUE_ORDERS) if len(ok) else None
    if "fit_score" in masks:
        fs = masks["fit_score"]
        masks["fit_score_constant"] = bool(fs.get("count", 0) > 1 and fs.get("min") == fs.get("max"))

    numeric = {c: numeric_summary(ok[c]) for c in NUMERIC_COLUMNS if _has_values(ok, c)}
    region = None
    if "_region" in df.columns:
        region = _counts(df.loc[status.isin(["ok", "failed"]), "_region"])
    stats = {
        "schema": STATS_SCHEMA,
        "source": dict(source or {}),
        "composition": comp,
        "masks": masks,
        "attributes": attrs,
        "intersections": intersections,
        "mask_mix_by_group": mix_by_group,
        "skin_tone_check": tone_check,
        "numeric": numeric,
        "warnings": warnings,
    }
    if region:
        stats["attribute_region"] = region
    # arrays for the figures, not part of the JSON
    stats["_ipi_counts"] = ipi["counts"]
    stats["_mask_id_ratios"] = mask_per_identity(ok)["ratios"] if has_mask and len(ok) else None
    stats["_numeric_values"] = {c: pd.to_numeric(ok[c], errors="coerce").dropna().to_numpy()
                                for c in numeric}
    return stats


def _fit_outcome(df: pd.DataFrame, status: pd.Series, reasons: pd.Series,
                 threshold: float) -> tuple[pd.Series | None, pd.Series | None]:
    """Rows where a mask was attempted, and which of them fit badly or failed to fit."""
    fit_reason = (status == "failed") & reasons.fillna("").str.contains("fit", case=False)
    masked = df["masked"].fillna(False).astype(bool) if "masked" in df.columns else None
    if masked is None and not fit_reason.any():
        return None, None
    attempt = fit_reason | ((status == "ok") & masked) if masked is not None else fit_reason
    poor = pd.Series(False, index=df.index)
    if _has_values(df, "fit_score"):
        poor = pd.to_numeric(df["fit_score"], errors="coerce") < threshold
    return attempt, (fit_reason | (attempt & poor))


def public(stats: dict) -> dict:
    """The JSON-ready part of the stats (no figure arrays)."""
    return {k: v for k, v in stats.items() if not k.startswith("_")}
