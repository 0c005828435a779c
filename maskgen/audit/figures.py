"""The report's figures as PNG bytes (matplotlib, Agg backend, no display needed).

PNGs carry no timestamp or software version, so the same stats give the same bytes.
"""

from __future__ import annotations

import io
import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from maskgen.audit.attributes import ITA_BINS  # noqa: E402
from maskgen.audit.stats import IPI_LABELS  # noqa: E402

DPI = 90
BLUE, ORANGE, GREY, RED = "#4C72B0", "#DD8452", "#8C8C8C", "#C44E52"
# Swatches for the skin-tone bins (display only; approximate colours of each ITA range).
TONE_COLOURS = ["#f3d9c6", "#e6bd9c", "#c99b74", "#a8744f", "#7a4f33", "#4a3020"]

plt.rcParams.update({
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "maskgen",
})


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # fixed margins instead of bbox_inches="tight": one draw instead of two
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "x"


def _short(labels: list[str], n: int = 18) -> list[str]:
    return [s if len(s) <= n else s[: n - 1] + "…" for s in labels]


def _ticks(ax, x: np.ndarray, labels: list[str]) -> None:
    """Readable category ticks: straight for few, slanted for some, vertical for many."""
    if len(labels) > 8:
        ax.set_xticks(x, _short(labels, 12), rotation=90, fontsize=7)
    elif len(labels) > 3:
        ax.set_xticks(x, _short(labels), rotation=35, ha="right")
    else:
        ax.set_xticks(x, _short(labels))


def _bars(ax, labels: list[str], values: list[float], title: str, color=BLUE, pct=False):
    x = np.arange(len(labels))
    ax.bar(x, values, color=color)
    _ticks(ax, x, labels)
    ax.set_title(title)
    if pct:
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))


def composition_figure(stats: dict) -> bytes:
    comp = stats["composition"]
    hist = comp["images_per_identity"]["histogram"]
    ratios = stats.get("_mask_id_ratios")
    ncol = 2 if ratios is not None and len(ratios) else 1
    fig, axes = plt.subplots(1, ncol, figsize=(4.2 * ncol, 2.8), squeeze=False)
    _bars(axes[0, 0], IPI_LABELS, [hist[k] for k in IPI_LABELS],
          f"identities by images per identity (n={comp['identities']})")
    axes[0, 0].set_xlabel("images per identity")
    axes[0, 0].set_ylabel("identities")
    if ncol == 2:
        ax = axes[0, 1]
        counts, edges = np.histogram(ratios, bins=np.linspace(0, 1, 21))
        ax.stairs(counts, edges, fill=True, color=ORANGE)
        ov = stats["masks"].get("ratio")
        if ov is not None:
            ax.axvline(ov, color="k", ls="--", lw=1, label=f"overall {ov:.1%}")
            ax.legend(frameon=False)
        ax.set_title("masked share per identity (≥2 images)")
        ax.set_xlabel("masked share")
        ax.set_ylabel("identities")
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.3, top=0.88, wspace=0.3)
    return _png(fig)


def masks_figure(stats: dict) -> bytes | None:
    m = stats["masks"]
    cols = [c for c in ("mask_type", "mask_color", "mask_texture", "wear") if m.get(c)]
    if not cols:
        return None
    fig, axes = plt.subplots(1, len(cols), figsize=(3.0 * len(cols), 2.8), squeeze=False)
    for ax, c in zip(axes[0], cols):
        d = m[c]
        _bars(ax, list(d), list(d.values()), c.replace("_", " "), color=ORANGE)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.3, top=0.88, wspace=0.35)
    return _png(fig)


def reasons_figure(stats: dict) -> bytes | None:
    comp = stats["composition"]
    parts = [(t, d) for t, d in (("dropped (filters)", comp["drops_by_reason"]),
                                 ("failed", comp["failures_by_reason"])) if d]
    if not parts:
        return None
    fig, axes = plt.subplots(1, len(parts), figsize=(4.2 * len(parts), 2.6), squeeze=False)
    for ax, (t, d) in zip(axes[0], parts):
        items = sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[:12]
        y = np.arange(len(items))
        ax.barh(y, [v for _, v in items], color=GREY if t.startswith("dropped") else RED)
        ax.set_yticks(y, _short([k for k, _ in items], 34))
        ax.invert_yaxis()
        ax.set_title(f"{t}: {sum(d.values())} images")
    fig.subplots_adjust(left=0.3, right=0.97, bottom=0.12, top=0.88, wspace=0.9)
    return _png(fig)


def attribute_figure(name: str, entry: dict) -> bytes:
    """Share vs target, mask ratio and failure rate per group of one attribute."""
    bal = entry["balance"]["groups"]
    panels = ["balance"] + [p for p in ("mask_ratio", "failure_rate") if p in entry]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.9), squeeze=False)
    groups = [g["group"] for g in bal if g["share"] is not None]
    ax = axes[0, 0]
    shares = [g["share"] for g in bal if g["share"] is not None]
    colors = TONE_COLOURS if name == "skin_tone" and len(groups) <= 6 else BLUE
    if name == "skin_tone":
        colors = [TONE_COLOURS[[b[0] for b in ITA_BINS].index(g)] if g in [b[0] for b in ITA_BINS]
                  else BLUE for g in groups]
    _bars(ax, groups, shares, f"{entry['title']}: share of images", color=colors, pct=True)
    tg = [g["target"] for g in bal if g["share"] is not None]
    if any(t is not None for t in tg):
        x = np.arange(len(groups))
        ax.scatter(x, [t if t is not None else np.nan for t in tg], marker="_", s=400, color="k",
                   zorder=3, label="target")
        ax.legend(frameon=False, fontsize=8)
    for ax, part in zip(axes[0, 1:], panels[1:]):
        rows = [r for r in entry[part]["groups"]]
        labels = [r["group"] for r in rows]
        val = "ratio" if part == "mask_ratio" else "rate"
        v = np.array([r[val] if r[val] is not None else np.nan for r in rows], dtype=float)
        lo = np.array([r["ci95"][0] if r["ci95"][0] is not None else np.nan for r in rows])
        hi = np.array([r["ci95"][1] if r["ci95"][1] is not None else np.nan for r in rows])
        x = np.arange(len(labels))
        ax.bar(x, v, color=ORANGE if part == "mask_ratio" else RED)
        ax.errorbar(x, v, yerr=[np.nan_to_num(v - lo), np.nan_to_num(hi - v)], fmt="none",
                    ecolor="k", lw=0.8, capsize=2)
        ov = entry[part]["overall"]
        if ov is not None:
            ax.axhline(ov, color="k", ls="--", lw=1)
        _ticks(ax, x, labels)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_title("masked share (95% CI)" if part == "mask_ratio"
                     else "failure rate (95% CI)")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.3, top=0.88, wspace=0.35)
    return _png(fig)


def numeric_figure(stats: dict) -> bytes | None:
    """Distributions of skin tone (ITA), pose and quality of the kept images."""
    vals = stats.get("_numeric_values") or {}
    cols = [c for c in ("ita", "yaw", "pitch", "roll", "sharpness", "brightness", "face_size")
            if c in vals and len(vals[c])]
    if not cols:
        return None
    ncol = min(4, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.8 * ncol, 2.3 * nrow), squeeze=False)
    for ax in axes.ravel()[len(cols):]:
        ax.axis("off")
    for ax, c in zip(axes.ravel(), cols):
        v = np.asarray(vals[c], dtype=float)
        if c == "sharpness":
            v = np.log10(np.maximum(v, 1e-3))
            label = "log10 sharpness (Laplacian var.)"
        else:
            label = {"ita": "ITA (°)", "yaw": "yaw (°)", "pitch": "pitch (°)", "roll": "roll (°)",
                     "brightness": "brightness (luma)", "face_size": "inter-ocular (px)"}[c]
        if c == "ita":
            edges = np.linspace(-90, 90, 61)
            counts, _ = np.histogram(np.clip(v, -90, 90), bins=edges)
            mids = (edges[:-1] + edges[1:]) / 2
            for (_, lo, hi), col in zip(ITA_BINS, TONE_COLOURS):  # one polygon per tone bin
                sel = (mids > lo) & (mids <= hi)
                if sel.any():
                    i0, i1 = np.flatnonzero(sel)[[0, -1]]
                    ax.stairs(counts[i0:i1 + 1], edges[i0:i1 + 2], fill=True, color=col)
            for _, lo, _ in ITA_BINS[:-1]:
                ax.axvline(lo, color="k", lw=0.5, ls=":")
        else:
            counts, edges = np.histogram(v, bins=40)
            ax.stairs(counts, edges, fill=True, color=BLUE)
        ax.set_title(label)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.1, top=0.9, wspace=0.3, hspace=0.45)
    return _png(fig)


def all_figures(stats: dict) -> dict[str, bytes]:
    """name -> PNG bytes, in report order."""
    out: dict[str, bytes] = {"composition.png": composition_figure(stats)}
    for name, fn in (("masks.png", masks_figure), ("drops.png", reasons_figure),
                     ("attributes.png", numeric_figure)):
        png = fn(stats)
        if png is not None:
            out[name] = png
    for col, entry in stats["attributes"].items():
        out[f"group_{slug(col)}.png"] = attribute_figure(col, entry)
    return out
