"""Per-group breakdowns (gender, race, age, skin tone, ...) with the best-worst gap.

Labels come from a CSV or parquet table joined on ``key`` (or ``path``: the image key relative
to the images folder) or, failing that, on ``identity``. A verification pair belongs to the
group of its *first* image (LFW pairs carry no labels of their own; genuine pairs share one
person). Groups with fewer than ``min_count`` pairs or probes are listed but left out of the gap.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

JOIN_COLUMNS = ("key", "path", "identity")


def read_group_labels(path: str | os.PathLike) -> tuple[str, dict[str, dict[str, str]]]:
    """(join column, {join value: {label column: value}}) from a CSV or parquet file."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    p = Path(path)
    table = pq.read_table(p) if p.suffix in (".parquet", ".pq") else pcsv.read_csv(p)
    cols = table.column_names
    join = next((c for c in JOIN_COLUMNS if c in cols), None)
    if join is None:
        raise ValueError(f"{path}: needs one of the columns {JOIN_COLUMNS} to join labels on")
    data = table.to_pydict()
    label_cols = [c for c in cols if c not in JOIN_COLUMNS]
    out: dict[str, dict[str, str]] = {}
    for i, j in enumerate(data[join]):
        out[str(j)] = {c: (None if data[c][i] is None else str(data[c][i])) for c in label_cols}
    return join, out


def labels_for(keys: list[str], identities: list[str], join: str,
               table: dict[str, dict[str, str]]) -> dict[str, list[str | None]]:
    """Label columns aligned with ``keys``: ``{column: [value per key]}`` (None when unknown)."""
    cols = sorted({c for row in table.values() for c in row})
    out: dict[str, list[str | None]] = {c: [] for c in cols}
    for k, ident in zip(keys, identities):
        row = table.get(ident if join == "identity" else k, {})
        for c in cols:
            out[c].append(row.get(c))
    return out


def breakdown(values: np.ndarray, groups: list[str | None], min_count: int = 1) -> dict:
    """Mean of ``values`` (e.g. 1/0 correct decisions) per group, and the best-worst gap."""
    values = np.asarray(values, dtype=np.float64)
    g = np.asarray([x if x is not None else "" for x in groups], dtype=object)
    per: dict[str, dict] = {}
    for name in sorted(set(g) - {""}):
        m = g == name
        per[str(name)] = {"value": float(values[m].mean()), "count": int(m.sum())}
    eligible = {k: v for k, v in per.items() if v["count"] >= min_count}
    gap = None
    if len(eligible) >= 2:
        best = max(eligible, key=lambda k: eligible[k]["value"])
        worst = min(eligible, key=lambda k: eligible[k]["value"])
        gap = {"best": best, "worst": worst,
               "gap": eligible[best]["value"] - eligible[worst]["value"]}
    return {"groups": per, "gap": gap, "unlabelled": int((g == "").sum())}
