"""The report's figures as PNG bytes (matplotlib, Agg backend, no display needed).

PNGs carry no timestamp or software version, so the same stats give the same bytes.
"""

from __future__ import annotations

import io
import math
import re
import threading
from collections import deque
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from maskgen.datasets.attributes import ITA_BINS, SKIN_TONES  # noqa: E402
from maskgen.audit.escape import mpl  # noqa: E402
from maskgen.audit.stats import IPI_LABELS  # noqa: E402
from maskgen.helper import Helper  # noqa: E402

DPI = 150  # sharp on high-density screens; fonts are sized in points, so they stay readable
BLUE, ORANGE, GREY, RED = "#4C72B0", "#DD8452", "#8C8C8C", "#C44E52"
# Swatches for the skin-tone bins (display only; approximate colours of each ITA range).
TONE_COLOURS = ["#f3d9c6", "#e6bd9c", "#c99b74", "#a8744f", "#7a4f33", "#4a3020"]

# The report's look, on matplotlib's defaults (a user's matplotlibrc or style is not
# applied: the same stats give the same bytes in any process that draws them)
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "figure.constrained_layout.use": True,  # room for every tick label, never clipped
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "maskgen",
}


PALETTE_COLOURS = 128  # charts hold few colours: a palette PNG is ~3x smaller than RGBA


def _png(fig) -> bytes:
    """The figure as a palette PNG at DPI (no metadata but the resolution: same bytes for
    the same figure)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(
        colors=PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True, dpi=(DPI, DPI))
    return out.getvalue()


def slug(name: str) -> str:
    """A file-name-safe form of a name; different names that would collide keep apart by a
    short hash of the name."""
    base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:48] or "x"
    if base != name:
        import zlib

        base += f"_{zlib.crc32(name.encode('utf-8')) & 0xffff:04x}"
    return base


def _short(labels: list[str], n: int = 18) -> list[str]:
    """Tick labels shortened and escaped (a ``$`` in a name is a dollar, not mathtext)."""
    return [mpl(s if len(s) <= n else s[: n - 1] + "…") for s in map(str, labels)]


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
    ax.set_title(mpl(title))
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
    return _png(fig)


def _heatmap(ax, values, rows, cols, title, fmt, cmap, vmax=None) -> None:
    v = np.array([[np.nan if x is None else float(x) for x in r] for r in values], dtype=float)
    im = ax.imshow(v, cmap=cmap, vmin=0, vmax=vmax if vmax is not None else np.nanmax(v)
                   if np.isfinite(v).any() else 1, aspect="auto")
    ax.set_xticks(np.arange(len(cols)), _short(cols, 14), rotation=35 if len(cols) > 3 else 0,
                  ha="right" if len(cols) > 3 else "center")
    ax.set_yticks(np.arange(len(rows)), _short(rows, 18))
    ax.set_title(mpl(title))
    big = len(rows) * len(cols) <= 40
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            if big and np.isfinite(v[i, j]):
                lim = im.norm(v[i, j])
                ax.text(j, i, fmt(v[i, j]), ha="center", va="center", fontsize=7.5,
                        color="white" if lim > 0.6 else "black")
    ax.spines[:].set_visible(False)


def intersection_figure(key: str, x: dict) -> bytes:
    """Share of images and failure rate of every cell of one intersection."""
    panels = [("share", "share of images", "Blues")]
    if "failure_rate" in x:
        panels.append(("failure_rate", "failure rate", "Reds"))
    if "masked_ratio" in x:
        panels.append(("masked_ratio", "masked share", "Oranges"))
    w = 1.2 + 0.55 * len(x["cols"])
    h = 1.3 + 0.32 * len(x["rows"])
    fig, axes = plt.subplots(1, len(panels), figsize=(max(3.2, w) * len(panels), max(2.4, h)),
                             squeeze=False)
    for ax, (k, t, cmap) in zip(axes[0], panels):
        _heatmap(ax, x[k], x["rows"], x["cols"], f"{key}: {t}", lambda v: f"{v:.0%}", cmap)
    return _png(fig)


def mask_mix_figure(col: str, entry: dict) -> bytes:
    """Mask type and wear mode within the masked images of each group (stacked shares)."""
    parts = [p for p in ("mask_type", "wear") if p in entry]
    fig, axes = plt.subplots(1, len(parts), figsize=(4.4 * len(parts), 0.9 + 0.3 * max(
        len(entry[p]["groups"]) for p in parts)), squeeze=False)
    palette = plt.get_cmap("tab10")
    for ax, p in zip(axes[0], parts):
        e = entry[p]
        c = np.asarray(e["counts"], dtype=float)
        share = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
        left = np.zeros(len(e["groups"]))
        y = np.arange(len(e["groups"]))
        for j, v in enumerate(e["values"]):
            ax.barh(y, share[:, j], left=left, color=palette(j % 10), label=mpl(v))
            left += share[:, j]
        ax.set_yticks(y, _short(e["groups"]))
        ax.invert_yaxis()
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_title(mpl(f"{p.replace('_', ' ')} by {col}"))
        ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def skin_check_figure(check: dict) -> bytes | None:
    """ITA bins within each label group and each brightness bin (stacked shares)."""
    labels = check.get("by_label", {})
    first = [c for c in ("race", "ethnicity") if c in labels] + [c for c in labels
                                                                 if c not in ("race", "ethnicity")]
    parts = [(f"by {c}", labels[c]) for c in first[:2]]
    if "by_brightness" in check:  # lighting: the first thing to rule out
        parts.insert(min(1, len(parts)), ("by face brightness", check["by_brightness"]))
    parts = [(t, e) for t, e in parts if e["groups"]][:3]
    if not parts:
        return None
    fig, axes = plt.subplots(1, len(parts), figsize=(4.0 * len(parts), 1.2 + 0.3 * max(
        len(e["groups"]) for _, e in parts)), squeeze=False)
    for ax, (t, e) in zip(axes[0], parts):
        share = np.array([[0.0 if x is None else x for x in r] for r in e["share"]])
        left = np.zeros(len(e["groups"]))
        y = np.arange(len(e["groups"]))
        for j, tone in enumerate(SKIN_TONES):
            ax.barh(y, share[:, j], left=left, color=TONE_COLOURS[j], label=tone,
                    edgecolor="white", linewidth=0.3)
            left += share[:, j]
        ax.set_yticks(y, _short(e["groups"]))
        ax.invert_yaxis()
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_title(mpl(f"skin-tone bins {t}"))
    axes[0, -1].legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def _jobs(stats: dict) -> list[tuple[str, Callable, tuple, bool]]:
    """The charts in report order: (file name, drawing function, its arguments, whether the
    arguments are small enough to send to a helper process; the per-sample and per-identity
    values stay in this one)."""
    jobs: list[tuple[str, Callable, tuple, bool]] = [
        ("composition.png", composition_figure, (stats,), False),
        ("masks.png", masks_figure, ({"masks": stats["masks"]},), True),
        ("drops.png", reasons_figure, ({"composition": stats["composition"]},), True),
        ("attributes.png", numeric_figure, (stats,), False),
    ]
    jobs += [(f"group_{slug(col)}.png", attribute_figure, (col, entry), True)
             for col, entry in stats["attributes"].items()]
    jobs += [(f"cross_{slug(key)}.png", intersection_figure, (key, x), True)
             for key, x in (stats.get("intersections") or {}).items()]
    jobs += [(f"maskmix_{slug(col)}.png", mask_mix_figure, (col, e), True)
             for col, e in (stats.get("mask_mix_by_group") or {}).items()]
    if stats.get("skin_tone_check"):
        jobs.append(("skin_tone_check.png", skin_check_figure, (stats["skin_tone_check"],), True))
    return jobs


def draw_chart(fn: Callable, args: tuple) -> bytes | None:
    """``fn(*args)`` (one chart's PNG bytes, or None) in the report's :data:`STYLE`."""
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        plt.rcParams.update(STYLE)
        return fn(*args)


def all_figures(stats: dict, helper: Helper | None = None) -> dict[str, bytes]:
    """name -> PNG bytes, in report order.

    With a ``helper`` process (:func:`figure_helper`) the charts are drawn in two processes:
    the helper takes the small-argument charts from the front of the list, one at a time, while
    this process draws the others and then takes charts from the back; a chart the helper
    fails on is drawn here. The bytes are the same either way (same code, same style)."""
    jobs = _jobs(stats)
    out: list[bytes | None] = [None] * len(jobs)
    shared = deque(i for i, job in enumerate(jobs) if job[3]) if helper is not None and helper.alive else deque()
    lock = threading.Lock()

    def feed() -> None:
        while True:
            with lock:
                if not shared:
                    return
                i = shared.popleft()
            try:
                out[i] = helper.call(draw_chart, jobs[i][1], jobs[i][2])
            except Exception:  # the helper failed (or the chart raised there): drawn here instead
                with lock:
                    shared.appendleft(i)
                return

    feeder = threading.Thread(target=feed, name="maskgen-figures", daemon=True) if shared else None
    if feeder is not None:
        feeder.start()
    for i, job in enumerate(jobs):
        if not job[3] or feeder is None:
            out[i] = draw_chart(job[1], job[2])
    while feeder is not None:
        with lock:
            i = shared.pop() if shared else None
        if i is None:
            break
        out[i] = draw_chart(jobs[i][1], jobs[i][2])
    if feeder is not None:
        feeder.join()
        for i in shared:  # left by a helper that failed after the last look
            out[i] = draw_chart(jobs[i][1], jobs[i][2])
    return {job[0]: png for job, png in zip(jobs, out) if png is not None}


def figure_helper() -> Helper | None:
    """A helper process for :func:`all_figures` that imports matplotlib while the caller
    prepares the stats; None on a single CPU (or when it cannot start)."""
    if _cpus() < 2:
        return None
    h = Helper(preload=(__name__,))
    return h if h.alive else None


def _cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
