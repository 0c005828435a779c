"""What can be audited: a build folder, a manifest file, or a plain folder of images.

A plain folder is scanned here into a manifest-shaped table with the build's own parts: its
folder scan (:mod:`maskgen.datasets.sources`), its per-image landmark pass
(:mod:`maskgen.datasets.faces`) and attributes by :mod:`maskgen.datasets.attributes` on the same
pixels; each unreadable or faceless image is kept as a ``failed`` row with the build's reason,
so failure rates per group can be measured. Labels from a
CSV/parquet file join by sample key or by image path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from maskgen.audit.workers import chunked, map_in_workers
from maskgen.datasets.attributes import face_attributes
from maskgen.datasets.catalog import DatasetInfo, identify, lookup
from maskgen.datasets.manifest import CORE_NAMES, conform
from maskgen.datasets.sources import IMAGE_EXTENSIONS as IMAGE_SUFFIXES
from maskgen.errors import InputError, OptionError
from maskgen.progress import Progress

ATTRIBUTE_COLUMNS = ["ita", "skin_tone", "sharpness", "brightness", "face_size"]
CHUNK = 50  # images per worker task: small enough for even progress, large enough to amortise


@dataclass
class AuditInput:
    """A manifest as a DataFrame plus what is known about where it came from."""

    table: pd.DataFrame
    kind: str  # build | manifest | folder
    name: str
    build_dir: Path | None = None
    build_config: dict | None = None
    dataset_info: dict | None = None
    notes: list[str] = field(default_factory=list)
    labels_info: dict | None = None
    path: Path | None = None  # the folder or manifest audited
    src: object | None = None  # the Source relative image paths belong to (picklable)
    dataset: DatasetInfo | None = None  # the known dataset of the images (catalog)

    @property
    def flat(self) -> bool:
        """A folder with no identity structure: every image is its own identity."""
        return (self.kind == "folder" and len(self.table) > 1
                and self.table["identity"].nunique() == len(self.table))

    def has_shards(self) -> bool:
        """True when a build folder holds shards that the card may point ``configs:`` at."""
        if self.kind != "build" or self.build_dir is None:
            return False
        info = self.dataset_info or {}
        if info.get("num_samples") == 0:
            return False
        return any((self.build_dir / "shards").glob("*.tar"))

    def source(self) -> dict:
        out = {"kind": self.kind, "name": self.name}
        if self.dataset is not None:
            out["dataset"] = {"name": self.dataset.name, "license": self.dataset.license}
        if self.labels_info:
            out["labels"] = self.labels_info
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def read_manifest_frame(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The manifest as a DataFrame; list columns (landmarks, box) only when asked for."""
    table = conform(pq.read_table(path))
    keep = [c for c in table.column_names
            if (columns is not None and c in columns) or c not in ("landmarks", "box")]
    return table.select(keep).to_pandas()


def load_input(
    path: str | os.PathLike,
    *,
    compute_attributes: bool = True,
    workers: int = 1,
    backend: str = "auto",
    fill_failed: bool = True,
    progress: bool = False,
) -> AuditInput:
    """Open ``path``: a build folder (``manifest.parquet`` inside), a manifest file, or an
    image folder (scanned). Missing attributes are computed from the images when
    ``compute_attributes`` and the images are reachable; with ``fill_failed``, failed rows
    (no landmarks) get them from the image centre."""
    p = Path(path)
    if p.is_dir() and (p / "manifest.parquet").is_file():
        inp = AuditInput(table=pd.DataFrame(), kind="build", name=p.name, build_dir=p, path=p)
        mpath = p / "manifest.parquet"
        if (p / "build.yaml").is_file():
            inp.build_config = _read_yaml(p / "build.yaml")
        if (p / "dataset.json").is_file():
            inp.dataset_info = _read_json(p / "dataset.json")
    elif p.is_file() and p.suffix == ".parquet":
        inp = AuditInput(table=pd.DataFrame(), kind="manifest", name=p.stem, path=p)
        mpath = p
    elif p.is_dir():
        table = scan_folder(p, workers=workers, backend=backend, progress=progress)
        src = table.attrs.pop("source", None)
        notes = _folder_notes(table) + [f"{k} ({v:,})" for k, v in
                                        sorted(table.attrs.pop("scan_notes", {}).items())]
        return AuditInput(table=table, kind="folder", name=p.name, path=p, src=src,
                          notes=notes)
    else:
        raise InputError(f"nothing to audit at {path}: expected a build folder, a "
                         f"manifest .parquet file or a folder of images")
    needs = compute_attributes and _missing_attributes(pq.read_schema(mpath).names, mpath)
    inp.table = read_manifest_frame(mpath, columns=["landmarks"] if needs else [])
    inp.src = source_of(inp)
    if needs:
        n = fill_attributes(inp.table, inp.src, workers=workers, progress=progress)
        inp.table = inp.table.drop(columns=["landmarks"], errors="ignore")
        inp.notes.append(f"skin tone and quality attributes computed from {n} source images "
                         f"(the manifest lacked them)")
    elif fill_failed:
        n = fill_attributes(inp.table, inp.src, only_failed=True, workers=workers,
                            progress=progress)
        if n:
            inp.notes.append(f"skin tone and quality of the {n} failed images measured on the "
                             f"image centre (no landmarks), so failure rates can be sliced by them")
    if not needs:
        note = attribute_coverage_note(inp.table, (inp.dataset_info or {}).get("attributes"))
        if note:
            inp.notes.append(note)
    return inp


def attribute_coverage_note(table: pd.DataFrame, built: dict | None = None) -> str | None:
    """Say so when the skin tone was measured on only part of the written samples (a build
    with ``--attributes sample|auto|none``): the skin-tone figures then describe that part.
    ``built`` is ``dataset.json["attributes"]`` when the build wrote one."""
    if "ita" not in table.columns or "status" not in table.columns:
        return None
    ok = table["status"] == "ok"
    total = int(ok.sum())
    measured = int(table.loc[ok, "ita"].notna().sum())  # what the skin-tone figures can use
    if total == 0 or measured == total:
        return None
    how = ""
    if built and built.get("mode"):
        how = f" (build option --attributes {built['mode']}"
        if built.get("sample_rate") is not None and built["mode"] in ("sample", "auto"):
            how += f", sample rate {built['sample_rate']:g}"
        how += f": {built['note']})" if built.get("note") else ")"
    return (f"skin tone and quality were measured on {measured:,} of the {total:,} written "
            f"samples ({100.0 * measured / total:.1f} %){how}; the skin-tone figures describe "
            f"those samples only")


def _missing_attributes(names: list[str], mpath: Path) -> bool:
    if "ita" not in names:
        return True
    col = pq.read_table(mpath, columns=["ita", "status"]).to_pandas()
    ok = col["status"].isin(["ok", "failed"])
    return bool(ok.any() and col.loc[ok, "ita"].isna().all())


def _read_yaml(p: Path) -> dict:
    try:
        obj = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read {p}: {exc}") from exc
    return obj if isinstance(obj, dict) else {}


def _read_json(p: Path) -> dict:
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read {p}: {exc}") from exc
    return obj if isinstance(obj, dict) else {}


def _source_string(inp: AuditInput) -> str | None:
    cfg = inp.build_config or {}
    v = cfg.get("source")
    return v if isinstance(v, str) else None


def source_of(inp: AuditInput):
    """The source a manifest's relative paths belong to (a
    :class:`maskgen.datasets.sources.Source`, or None when it cannot be found here): the
    build's ``source`` parsed again (with its ``identity_depth``), else the root recorded in
    ``dataset.json``, else the manifest's own folder."""
    from maskgen.datasets.sources import parse_source

    cfg = inp.build_config or {}
    depth = cfg.get("identity_depth", 1)
    depth = depth if isinstance(depth, int) else 1
    spec = _source_string(inp)
    info = inp.dataset_info or {}
    src_info = info.get("source")
    roots = [info.get("root"), info.get("source_root"),
             src_info.get("root") if isinstance(src_info, dict) else None]
    kind = src_info.partition(":")[0] if isinstance(src_info, str) and ":" in src_info else None
    cands = [spec] if spec else []
    cands += [f"{kind}:{r}" if kind else r for r in roots if isinstance(r, str) and r]
    if inp.kind == "manifest" and inp.path is not None:
        cands.append(f"folder:{inp.path.parent}")
    for c in cands:
        try:
            return parse_source(c, identity_depth=depth)
        except Exception:  # a source not on this machine: try the next
            continue
    return None


def resolve_dataset(inp: AuditInput, name: str | None = None) -> AuditInput:
    """Which known dataset the audited images come from (exact names only).

    ``name`` (the user's ``--dataset``) must be a catalog name. Otherwise: what the build
    recorded of its source (a catalog name in ``dataset.json`` or the ``source`` of
    ``build.yaml``, e.g. ``lfw``, or the name of its folder), else the audited folder's name.
    """
    if name:
        info = lookup(name)
        if info is None:
            from maskgen.datasets.catalog import names

            raise OptionError(f"--dataset {name!r} is not a known dataset; known: "
                              f"{', '.join(names())} (or leave it out and set --license)")
        inp.dataset = info
        return inp
    cands: list[str] = []
    src = (inp.dataset_info or {}).get("source")
    if isinstance(src, dict):
        cands += [str(src[k]) for k in ("dataset", "name") if isinstance(src.get(k), str)]
        info_src = src.get("info")
        if isinstance(info_src, dict) and isinstance(info_src.get("name"), str):
            cands.append(info_src["name"])
    for spec in (_source_string(inp), src if isinstance(src, str) else None):
        if not spec:
            continue
        kind, sep, rest = spec.partition(":")
        if sep and kind.isalpha() and len(kind) > 1:  # kind:path (a Windows drive is 1 letter)
            cands.append(kind)  # the "lfw" source kind is LFW
            spec = rest
        if spec:
            cands.append(spec)
            p = PurePosixPath(spec.replace("\\", "/"))
            if p.suffix in (".rec", ".idx", ".tar") or "{" in p.name or "*" in p.name:
                p = p.parent  # a record file or shard pattern: its folder names the dataset
            info = identify(p)
            if info is not None:
                inp.dataset = info
                return inp
    if inp.kind == "manifest" and "source" in inp.table.columns:
        kinds = inp.table["source"].dropna().unique()
        if len(kinds) == 1:
            cands.append(str(kinds[0]))
    for c in cands:
        info = lookup(c)
        if info is not None:
            inp.dataset = info
            return inp
    if inp.kind == "folder" and inp.path is not None:
        inp.dataset = identify(inp.path.resolve())
    return inp


def _folder_notes(table: pd.DataFrame) -> list[str]:
    notes = ["plain image folder: landmarks detected and attributes computed by the audit"]
    if table["identity"].nunique() == len(table) and len(table) > 1:
        notes.append("flat folder: no identity structure, each image counts as its own identity")
    return notes


# ------------------------------------------------------------------ folder scan
def _key(rel: PurePosixPath) -> str:
    return str(rel.with_suffix("")).replace("/", "-").replace(".", "_")


def read_image(loc: tuple) -> tuple[np.ndarray | None, str]:
    """Decode the image of a locator ``(source, path, offset, nbytes, member)`` (in a worker
    only); ``source`` is the :class:`maskgen.datasets.sources.Source` that relative paths
    belong to, or None for an absolute file path. Never raises.

    Only regular files are read, below a size cap checked before reading (the sources'
    readers); decoding goes through :mod:`maskgen.masks.imageio` (its pixel caps apply).
    """
    from maskgen.datasets.sources import read_file
    from maskgen.masks.imageio import decode_image

    src, path, offset, nbytes, member = loc
    if path is None:
        return None, "unreadable: no path"
    has_offset = offset is not None and not pd.isna(offset) and int(offset) >= 0  # -1: none
    try:
        if src is not None and not os.path.isabs(path):
            data = src.read_bytes(path, int(offset) if has_offset else None,
                                  None if nbytes is None or pd.isna(nbytes) or int(nbytes) < 0 else int(nbytes),
                                  member if isinstance(member, str) else None)
        elif not has_offset and not isinstance(member, str):
            data = read_file(path)
        else:
            return None, "unreadable: a record without its source"
    except MemoryError:
        return None, "unreadable: out of memory"
    except Exception as exc:  # ReadError carries the row's reason; anything else is named
        reason = getattr(exc, "reason", None)
        return None, reason or f"unreadable: {type(exc).__name__}: {exc}"
    return decode_image(data)


def _measure(img: np.ndarray, res: dict) -> dict:
    """The attributes of one decoded image, on its face (or on the image centre when no face
    was found: ``_region`` says so, and the failure rate can be sliced by skin tone too)."""
    attrs = face_attributes(img, res["landmarks"])
    return {**{k: attrs[k] for k in ATTRIBUTE_COLUMNS}, "_region": attrs["region"],
            "_ita_raw": attrs["ita_raw"], "_white_corrected": attrs["white_corrected"]}


def _audit_row(res: dict) -> dict:
    """A result of the build's per-image pass -> the fields of the audit's folder table."""
    row = {k: res[k] for k in ("width", "height", *ATTRIBUTE_COLUMNS, "_region", "_ita_raw",
                               "_white_corrected") if k in res}
    if res["a_status"] != "ok":
        return {"status": "failed", "reason": res["a_reason"], **row}
    return {"status": "ok", "landmarks": res["landmarks"], "yaw": res["yaw"], "pitch": res["pitch"],
            "roll": res["roll"], "det_score": res["det_score"], "_faces": res["n_faces"], **row}


def _analyse_many(items: list[tuple]) -> list[dict]:
    """Worker task: ``(source, path, nbytes, backend)`` items (one source and backend per
    task) -> one table row each.

    The build's per-image landmark pass (:func:`maskgen.datasets.faces.analyze_rows`: decode
    once, the batched detector, every face found and the most central taken as the subject),
    with the attributes measured on the same pixels."""
    from maskgen.datasets.faces import analyze_rows

    if not items:
        return []
    src, backend = items[0][0], items[0][3]
    rows = [{"_cache_key": str(k), "path": path, "nbytes": nb} for k, (_, path, nb, _) in enumerate(items)]

    def read(r: dict) -> bytes:
        nb = r["nbytes"]
        return src.read_bytes(r["path"], None, None if nb is None or pd.isna(nb) or int(nb) < 0 else int(nb))

    return [_audit_row(res) for res in analyze_rows(rows, backend, read=read, select="all", measure=_measure, hash_images=False)]


def _crashed_row(item, reason: str) -> dict:
    return {"status": "failed", "reason": reason}


def scan_source(root: Path):
    """The build's folder scan of ``root`` (:mod:`maskgen.datasets.sources`): identity
    folders one level down, or, when the folder holds images only, one identity per image."""
    from maskgen.datasets.sources import parse_source
    from maskgen.datasets.sources.base import ABOVE_IDENTITY

    src = parse_source(f"folder:{root}", identity_depth=1)
    table = src.scan()
    drop = table.column("_drop").to_pylist()
    if table.num_rows and all(d == ABOVE_IDENTITY for d in drop if d is not None) \
            and all(d is not None for d in drop):
        src = parse_source(f"folder:{root}", identity_depth=0)  # a flat folder
        table = src.scan()
    return src, table


def scan_folder(root: str | os.PathLike, *, workers: int = 1, backend: str = "auto",
                paths: Iterable[Path] | None = None, progress: bool = False) -> pd.DataFrame:
    """Manifest-shaped table of the images under ``root`` with the build's scan (every file
    found gets a row: skipped ones with their reason), landmarks and attributes measured in
    worker processes. ``paths``: only these images."""
    from maskgen.datasets.sources import DROPPED_REASONS

    root = Path(root)
    src, table = scan_source(root)
    scan = table.to_pandas()
    if paths is not None:
        wanted = [Path(os.path.relpath(os.path.abspath(p), os.path.abspath(root))).as_posix()
                  for p in paths]
        pos = {rel: i for i, rel in enumerate(scan["path"])}
        scan = scan.iloc[[pos[w] for w in wanted if w in pos]].reset_index(drop=True)
    if not len(scan):
        raise InputError(f"no image found in {root} (looked for "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    flat = src.identity_depth == 0
    todo = [i for i, d in enumerate(scan["_drop"]) if d is None or pd.isna(d)]
    chunks = chunked([(src, scan.at[i, "path"], scan.at[i, "nbytes"], backend) for i in todo], CHUNK)
    with Progress("audit", len(todo), quiet=not progress) as prog:
        prog.note(f"landmarks and attributes of {len(todo):,} images ({workers} worker(s))")
        done = [r for part in map_in_workers(_analyse_many, chunks, workers=workers, progress=prog,
                                             on_crash=_crashed_row) for r in part]
    rows: list[dict] = [{} for _ in range(len(scan))]
    for i, r in zip(todo, done):
        rows[i] = r
    recs = []
    for i, rel_s in enumerate(scan["path"]):
        rel = PurePosixPath(rel_s)
        key = _key(rel)
        d = scan.at[i, "_drop"]
        row = rows[i] if not (isinstance(d, str) and d) else {
            "status": "dropped" if d in DROPPED_REASONS else "failed", "reason": d}
        identity = key if flat else (scan.at[i, "identity"] or "")
        recs.append({"key": key, "identity": identity, "source": "folder", "path": rel_s,
                     "nbytes": scan.at[i, "nbytes"], **row})
    df = pd.DataFrame.from_records(recs)
    for c in CORE_NAMES:
        if c not in df.columns:
            df[c] = None
    df["label"] = -1
    df.attrs["scan_notes"] = dict(src.notes)
    df.attrs["source"] = src
    return df


# ------------------------------------------------------------------ attributes from a manifest
def _attributes_many(items: list[tuple]) -> list[dict | None]:
    """Worker task: ``(locator, landmarks or None)`` -> the attributes (None: unreadable)."""
    out: list[dict | None] = []
    for loc, lm in items:
        try:
            img, _ = read_image(loc)
            if img is None:
                out.append(None)
                continue
            arr = None if lm is None else np.asarray(lm, np.float32).reshape(68, 2)
            a = face_attributes(img, arr)
            out.append({k: a[k] for k in (*ATTRIBUTE_COLUMNS, "region", "ita_raw",
                                          "white_corrected")})
        except Exception:  # a bad image keeps its nulls
            out.append(None)
    return out


def locators(df: pd.DataFrame, src) -> list[tuple]:
    """``(source, path, offset, nbytes, member)`` of every row: relative paths are read
    through ``src`` (the manifest's source, see :func:`source_of`)."""
    def col(name):
        return df[name].tolist() if name in df.columns else [None] * len(df)

    out = []
    for path, off, nb, mem in zip(col("path"), col("offset"), col("nbytes"), col("member")):
        p = None if path is None or (isinstance(path, float) and np.isnan(path)) else str(path)
        out.append((src, p, off, nb, mem if isinstance(mem, str) else None))
    return out


def _landmarks_136(lm) -> list | None:
    """68 (x, y) points as a flat list, whatever the manifest's layout (flat 136 values or
    68 pairs); None when absent or malformed."""
    if lm is None or (isinstance(lm, float) and np.isnan(lm)):
        return None
    try:
        arr = np.asarray([np.asarray(p, dtype=np.float32) for p in lm], dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return arr.ravel().tolist() if arr.size == 136 else None


def fill_attributes(df: pd.DataFrame, src, only_failed: bool = False, *,
                    workers: int = 1, progress: bool = False) -> int:
    """Compute the attributes a manifest lacks, from its source images (in place, decoded in
    worker processes); returns how many rows got them.

    Rows whose image cannot be read (missing paths, bad records) keep nulls.
    """
    wanted = ["failed"] if only_failed else ["ok", "failed"]
    todo = df.index[df["status"].isin(wanted) & df["ita"].isna() & df["path"].notna()]
    if len(todo) == 0:
        return 0
    pos = {ix: i for i, ix in enumerate(df.index)}
    locs = locators(df, src)
    lms = df["landmarks"].tolist() if "landmarks" in df.columns else [None] * len(df)
    items = []
    for ix in todo:
        i = pos[ix]
        lm = _landmarks_136(lms[i])
        items.append((locs[i], lm))
    with Progress("audit", len(items), quiet=not progress) as prog:
        prog.note(f"attributes from {len(items):,} images ({workers} worker(s))")
        res = [r for part in map_in_workers(_attributes_many, chunked(items, CHUNK * 4),
                                            workers=workers, progress=prog,
                                            on_crash=lambda item, reason: None) for r in part]
    # rows that already had attributes: measured by whoever wrote the manifest
    region = np.where(df["ita"].notna().to_numpy(), "manifest", None).astype(object)
    cols = {k: df[k].astype("object").to_numpy(copy=True) if k == "skin_tone"
            else pd.to_numeric(df[k], errors="coerce").to_numpy(dtype=np.float64, copy=True)
            for k in ATTRIBUTE_COLUMNS}
    extra = {k: (df[f"_{k}"].to_numpy(dtype=object, copy=True) if f"_{k}" in df.columns
                 else np.full(len(df), None, dtype=object)) for k in ("ita_raw", "white_corrected")}
    done = 0
    for ix, a in zip(todo, res):
        if a is None:
            continue
        i = pos[ix]
        for k in ATTRIBUTE_COLUMNS:
            cols[k][i] = a[k]
        for k in extra:
            extra[k][i] = a[k]
        region[i] = a["region"]
        done += 1
    for k in ATTRIBUTE_COLUMNS:
        df[k] = cols[k]
    df["_region"] = region
    for k, v in extra.items():
        df[f"_{k}"] = v
    return done


# ------------------------------------------------------------------ labels
def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """A label table (CSV read as text, or Parquet); unreadable files end in ``InputError``."""
    p = Path(path)
    try:
        if p.suffix == ".parquet":
            return pd.read_parquet(p)
        return pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read labels {p}: {exc}") from exc


def _label_path_column(lab: pd.DataFrame) -> str:
    for c in ("path", "file", "filename", "image", "img"):
        if c in lab.columns:
            return c
    raise InputError(f"labels have no path column (path/file/filename/image): {list(lab.columns)}")


def _suffixes(p: str) -> list[str]:
    parts = PurePosixPath(p.replace("\\", "/")).parts
    return ["/".join(parts[i:]) for i in range(len(parts))]


def join_labels(inp: AuditInput, labels: str | os.PathLike, join_on: str = "key") -> AuditInput:
    """Add the label columns to the table, matched by ``key``, by image path or by identity.

    Path matching compares path suffixes, so ``val/1.jpg`` in a label file matches the image
    ``1.jpg`` of a scanned ``val`` folder and ``/data/fairface/val/1.jpg`` in a manifest.
    A suffix shared by several images never matches (no silent mix-ups).
    """
    lab = read_labels(labels)
    n_label_rows = len(lab)
    df = inp.table
    if join_on == "key":
        if "key" not in lab.columns:
            raise InputError("labels need a 'key' column to join on key (or use join_on='path')")
        lab_key = lab["key"].astype(str)
        target = df["key"].astype(str)
        col = "key"
    elif join_on == "path":
        col = _label_path_column(lab)
        index: dict[str, int] = {}
        dup: set[str] = set()
        for i, p in enumerate(df["path"].astype("object").fillna("")):
            for s in _suffixes(str(p)):
                if s in index:
                    dup.add(s)
                index[s] = i
        row_of = []
        for p in lab[col].astype(str):
            hit = None
            for s in _suffixes(p):
                if s in index and s not in dup:
                    hit = index[s]
                    break
            row_of.append(hit)
        lab = lab.assign(_row=row_of)
        target = pd.Series(np.arange(len(df)), index=df.index)
        lab_key = lab["_row"]
    elif join_on == "identity":  # per-identity labels (e.g. gender of each LFW person)
        col = next((c for c in ("identity", "name", "person") if c in lab.columns), None)
        if col is None:
            raise InputError("labels need an 'identity' (or 'name') column to join on identity")
        lab_key = lab[col].astype(str)
        target = df["identity"].astype(str)
    else:
        raise OptionError(f"join_on must be 'key', 'path' or 'identity', not {join_on!r}")
    lab = lab.assign(_k=lab_key)
    lab = lab[lab["_k"].notna()]
    dups = int(lab["_k"].duplicated().sum())
    lab = lab.drop_duplicates("_k", keep="first")
    value_cols = [c for c in lab.columns if c not in (col, "_row", "_k")]
    rename = {c: (f"label_{c}" if c in CORE_NAMES or c in df.columns else c) for c in value_cols}
    mapped = lab.set_index("_k")[value_cols].rename(columns=rename)
    joined = mapped.reindex(target.to_numpy())
    joined.index = df.index
    for c in joined.columns:
        df[c] = joined[c].astype("object").where(joined[c].notna(), None)
    matched = int(joined.notna().any(axis=1).sum()) if len(joined.columns) else 0
    inp.table = df
    inp.labels_info = {
        "file": Path(labels).name,
        "join_on": join_on,
        "columns": list(rename.values()),
        "label_rows": n_label_rows,
        "matched_images": matched,
        "unmatched_images": int(len(df) - matched),
        "duplicate_label_rows": dups,
    }
    return inp
