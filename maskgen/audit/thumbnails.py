"""Thumbnail strips for the report: masked samples per mask type and wear mode, and failed
faces per group, so a reader sees what "masked" and "failed" mean.

The main process only chooses rows (metadata) and embeds the JPEG bytes the workers return;
every image is read and decoded in a worker process (:mod:`maskgen.audit.workers`) with the
decoder's caps. The choice of rows is deterministic (a hash of each key), so the same audit
gives the same strips.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from maskgen.audit.metrics import UNKNOWN, group_labels

TILE = 96  # pixels per thumbnail side
PER_STRIP = 8  # thumbnails per strip
MAX_STRIPS = 24  # at most this many strips per section
JPEG_QUALITY = 80


@dataclass(frozen=True)
class Strip:
    """One row of thumbnails: a file name, what it shows, and the images to read."""

    name: str  # report/<name>.jpg
    section: str  # "masked" | "failed"
    label: str  # e.g. "surgical / correct" or "race = Black"
    items: tuple  # ((kind, locator), ...) read in the worker
    count: int  # rows of this kind in the data (the strip shows up to PER_STRIP of them)


def _order(keys: pd.Series) -> np.ndarray:
    """A stable pseudo-random order of rows (crc32 of the key): no clustering by folder."""
    h = np.fromiter((zlib.crc32(str(k).encode("utf-8")) for k in keys), np.uint64, len(keys))
    return np.lexsort((keys.astype(str).to_numpy(), h))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "x"


def plan_strips(inp, stats: dict) -> list[Strip]:
    """Which rows to show: masked samples read from the build's shards, failed images read
    from the source."""
    from maskgen.audit.sources import locators

    df = inp.table
    strips: list[Strip] = []
    status = df["status"].astype("object").fillna("pending")
    shards_dir = inp.build_dir / "shards" if inp.build_dir is not None else None
    # masked samples, per mask type and wear mode, from the shards (the image a trainer sees)
    if (shards_dir is not None and shards_dir.is_dir() and "masked" in df.columns
            and "shard" in df.columns):
        m = df[(status == "ok") & df["masked"].fillna(False).astype(bool) & df["shard"].notna()]
        if len(m):
            t = group_labels(m["mask_type"]) if "mask_type" in m.columns else None
            w = group_labels(m["wear"]) if "wear" in m.columns else None
            combo = (t if t is not None else pd.Series("mask", index=m.index)) + " / " + (
                w if w is not None else pd.Series("worn", index=m.index))
            for i, c in enumerate(sorted(combo.unique())[:MAX_STRIPS]):
                sub = m[combo == c]
                sub = sub.iloc[_order(sub["key"])[:PER_STRIP]]
                items = tuple(("shard", (str(shards_dir / str(s)), f"{k}.jpg"))
                              for s, k in zip(sub["shard"], sub["key"]))
                strips.append(Strip(f"thumbs_masked_{i:02d}_{_slug(c)}.jpg", "masked", c, items,
                                    int((combo == c).sum())))
    # kept faces per skin-tone bin, from the source: what each bin looks like in this data
    if "skin_tone" in df.columns:
        from maskgen.datasets.attributes import SKIN_TONES

        tones = df["skin_tone"].astype("object")
        if "ita" in df.columns:  # a manifest may carry ITA without its bin
            from maskgen.datasets.attributes import skin_tone_label

            ita = pd.to_numeric(df["ita"], errors="coerce")
            tones = tones.where(tones.notna(), ita.map(
                lambda v: skin_tone_label(float(v)) if pd.notna(v) else None))
        kept = df[(status == "ok") & tones.notna()]
        if len(kept):
            loc_of = dict(zip(kept.index, locators(kept, inp.src)))
            for i, tone in enumerate(SKIN_TONES):
                sub = kept[tones[kept.index] == tone]
                sub = sub.iloc[_order(sub["key"])[:PER_STRIP]]
                items = tuple(("source", loc_of[ix]) for ix in sub.index if loc_of[ix][1])
                if items:
                    strips.append(Strip(f"thumbs_tone_{i}_{_slug(tone)}.jpg", "tone", tone,
                                        items, int((tones[kept.index] == tone).sum())))
    # failed images per group of the first demographic attribute (else skin tone)
    failed = df[status == "failed"]
    if len(failed):
        demo = [c for c, e in stats["attributes"].items() if e["kind"] == "demographic"]
        pref = [c for c in ("race", "ethnicity", "skin_tone") if c in demo]
        col = (pref or demo or [None])[0]
        groups = group_labels(failed[col]) if col else pd.Series("all", index=failed.index)
        locs = locators(failed, inp.src)
        loc_of = dict(zip(failed.index, locs))
        order = [g for g in (r["group"] for r in stats["attributes"][col]["balance"]["groups"])
                 if g in set(groups)] if col else ["all"]
        order += sorted(set(groups) - set(order) - {UNKNOWN}) + (
            [UNKNOWN] if UNKNOWN in set(groups) and UNKNOWN not in order else [])
        for i, g in enumerate(order[:MAX_STRIPS]):
            sub = failed[groups == g]
            sub = sub.iloc[_order(sub["key"])[:PER_STRIP]]
            items = tuple(("source", loc_of[ix]) for ix in sub.index if loc_of[ix][1])
            if items:
                label = f"{col} = {g}" if col else "all failed images"
                strips.append(Strip(f"thumbs_failed_{i:02d}_{_slug(g)}.jpg", "failed", label,
                                    items, int((groups == g).sum())))
    return strips


def _tile(img: np.ndarray | None) -> np.ndarray:
    """A TILE x TILE thumbnail (letterboxed, grey when the image could not be read)."""
    import cv2

    out = np.full((TILE, TILE, 3), 200, np.uint8)
    if img is None:
        cv2.line(out, (8, 8), (TILE - 9, TILE - 9), (150, 150, 150), 2)
        cv2.line(out, (TILE - 9, 8), (8, TILE - 9), (150, 150, 150), 2)
        return out
    h, w = img.shape[:2]
    s = TILE / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    y0, x0 = (TILE - nh) // 2, (TILE - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = small
    return out


def _shard_members(path: str) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size) of the regular members of one shard, from its tar
    headers alone; the shard is opened as the sources open files (regular files only)."""
    import tarfile

    from maskgen.datasets.sources.base import open_regular

    fd, _ = open_regular(path, path)
    with os.fdopen(fd, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
        return {m.name: (m.offset_data, m.size) for m in tf if m.isfile()}


def _read(kind: str, loc, shards: dict) -> np.ndarray | None:
    """Decode one thumbnail's image (in a worker). A build's sample is read from its shard
    through the WebDataset source (offset and size from the shard's headers, the size cap
    checked before reading); a source image through :func:`maskgen.audit.sources.read_image`.
    ``shards`` caches each shard's member table for the task."""
    from maskgen.audit.sources import read_image

    if kind != "shard":
        img, _ = read_image(loc)
        return img
    import tarfile

    from maskgen.datasets.sources import ReadError
    from maskgen.datasets.sources.webdataset import WebDatasetSource
    from maskgen.masks.imageio import decode_image

    path, member = loc
    if path not in shards:
        try:
            shards[path] = _shard_members(path)
        except (ReadError, OSError, tarfile.TarError, EOFError):
            shards[path] = {}
    where = shards[path].get(member)
    if where is None:
        return None
    shard = Path(path)
    src = WebDatasetSource(shard.parent, shards=(shard.name,))
    try:
        data = src.read_bytes(shard.name, where[0], where[1], member)
    except (ReadError, OSError):
        return None
    img, _ = decode_image(data)
    return img


def render_strips(strips: list[Strip]) -> list[bytes]:
    """Worker task: each strip as JPEG bytes (one row of tiles, 2 px gaps; an unreadable image
    is a crossed tile, a strip of which nothing could be read is empty bytes)."""
    import cv2

    out = []
    shards: dict = {}  # shard path -> its member table, read once per task
    for st in strips:
        tiles, read = [], 0
        for kind, loc in st.items:
            try:
                img = _read(kind, loc, shards)
            except Exception:  # one bad image costs only its tile
                img = None
            read += img is not None
            tiles.append(_tile(img))
        if not read:  # nothing of it on this machine (a source moved away): no strip
            out.append(b"")
            continue
        gap = np.full((TILE, 2, 3), 255, np.uint8)
        row = np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(row, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        out.append(buf.tobytes() if ok else b"")
    return out


def make_thumbnails(inp, stats: dict, *, workers: int = 1,
                    progress: bool = False) -> dict[str, bytes]:
    """``report/<name>.jpg`` -> JPEG bytes, plus the strips' descriptions in
    ``stats["_thumbnails"]`` (for the report; not part of ``stats.json``)."""
    from maskgen.audit.workers import map_in_workers
    from maskgen.progress import Progress

    strips = plan_strips(inp, stats)
    stats["_thumbnails"] = []
    if not strips:
        return {}
    chunks = [strips[i::max(1, workers)] for i in range(max(1, workers))]
    chunks = [c for c in chunks if c]
    with Progress("audit", len(strips), unit="strips", quiet=not progress) as prog:
        prog.note(f"thumbnail strips ({workers} worker(s))")
        parts = map_in_workers(render_strips, chunks, workers=workers, progress=prog,
                               on_crash=lambda item, reason: b"")
    by_name = {st.name: data for c, res in zip(chunks, parts) for st, data in zip(c, res)}
    out = {}
    for st in strips:
        data = by_name.get(st.name, b"")
        if data:
            out[st.name] = data
            stats["_thumbnails"].append({"name": st.name, "section": st.section,
                                         "label": st.label, "shown": len(st.items),
                                         "count": st.count})
    return out


def thumbnail_files(out_dir: Path) -> list[Path]:
    """Thumbnail strips present in a report folder."""
    return sorted((out_dir / "report").glob("thumbs_*.jpg"))
