"""What can be audited: a build folder, a manifest file, or a plain folder of images.

A plain folder is scanned here into a manifest-shaped table (landmarks by the masks library,
attributes by :mod:`maskgen.audit.attributes`), each unreadable or faceless image kept as a
``failed`` row with its reason, so failure rates per group can be measured. Labels from a
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

from maskgen.audit.attributes import face_attributes
from maskgen.datasets.manifest import CORE_NAMES, conform

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
ATTRIBUTE_COLUMNS = ["ita", "skin_tone", "sharpness", "brightness", "face_size"]
RAY_OBJECT_STORE_BYTES = 100 * 1024 * 1024  # tasks return small dicts only


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

    def source(self) -> dict:
        out = {"kind": self.kind, "name": self.name}
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
) -> AuditInput:
    """Open ``path``: a build folder (``manifest.parquet`` inside), a manifest file, or an
    image folder (scanned). Missing attributes are computed from the images when
    ``compute_attributes`` and the images are reachable; with ``fill_failed``, failed rows
    (no landmarks) get them from the image centre."""
    p = Path(path)
    if p.is_dir() and (p / "manifest.parquet").is_file():
        inp = AuditInput(table=pd.DataFrame(), kind="build", name=p.name, build_dir=p)
        mpath = p / "manifest.parquet"
        if (p / "build.yaml").is_file():
            inp.build_config = yaml.safe_load((p / "build.yaml").read_text()) or {}
        if (p / "dataset.json").is_file():
            inp.dataset_info = json.loads((p / "dataset.json").read_text())
    elif p.is_file() and p.suffix == ".parquet":
        inp = AuditInput(table=pd.DataFrame(), kind="manifest", name=p.stem)
        mpath = p
    elif p.is_dir():
        table = scan_folder(p, workers=workers, backend=backend)
        return AuditInput(table=table, kind="folder", name=p.name,
                          notes=_folder_notes(table))
    else:
        raise FileNotFoundError(f"nothing to audit at {path}: expected a build folder, a "
                                f"manifest .parquet file or a folder of images")
    needs = compute_attributes and _missing_attributes(pq.read_schema(mpath).names, mpath)
    inp.table = read_manifest_frame(mpath, columns=["landmarks"] if needs else [])
    if needs:
        n = fill_attributes(inp.table, _source_root(inp))
        inp.table = inp.table.drop(columns=["landmarks"], errors="ignore")
        inp.notes.append(f"skin tone and quality attributes computed from {n} source images "
                         f"(the manifest lacked them)")
    elif fill_failed:
        n = fill_attributes(inp.table, _source_root(inp), only_failed=True)
        if n:
            inp.notes.append(f"skin tone and quality of the {n} failed images measured on the "
                             f"image centre (no landmarks), so failure rates can be sliced by them")
    return inp


def _missing_attributes(names: list[str], mpath: Path) -> bool:
    if "ita" not in names:
        return True
    col = pq.read_table(mpath, columns=["ita", "status"]).to_pandas()
    ok = col["status"].isin(["ok", "failed"])
    return bool(ok.any() and col.loc[ok, "ita"].isna().all())


def _source_root(inp: AuditInput) -> Path | None:
    """Where relative ``path`` values of a build manifest live (the build's source folder)."""
    cfg = inp.build_config or {}
    for k in ("source", "input", "source_dir", "input_dir", "root"):
        v = cfg.get(k)
        if isinstance(v, str) and Path(v).is_dir():
            return Path(v)
        if isinstance(v, dict):
            for kk in ("path", "root", "dir"):
                if isinstance(v.get(kk), str) and Path(v[kk]).is_dir():
                    return Path(v[kk])
    return inp.build_dir


def _folder_notes(table: pd.DataFrame) -> list[str]:
    notes = ["plain image folder: landmarks detected and attributes computed by the audit"]
    if table["identity"].nunique() == len(table) and len(table) > 1:
        notes.append("flat folder: no identity structure, each image counts as its own identity")
    return notes


# ------------------------------------------------------------------ folder scan
def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` in a stable order (sorted relative paths)."""
    out = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(out, key=lambda q: q.relative_to(root).as_posix())


def _key(rel: PurePosixPath) -> str:
    return str(rel.with_suffix("")).replace("/", "-").replace(".", "_")


def _pose(face) -> tuple[float, float, float]:
    pose = getattr(face, "pose", None)
    if pose is None:
        return (np.nan, np.nan, np.nan)
    if isinstance(pose, dict):
        return tuple(float(pose.get(k, np.nan)) for k in ("yaw", "pitch", "roll"))  # type: ignore
    if hasattr(pose, "yaw"):
        return (float(pose.yaw), float(pose.pitch), float(pose.roll))
    a = np.asarray(pose, dtype=np.float64).ravel()
    return (float(a[0]), float(a[1]), float(a[2])) if a.size >= 3 else (np.nan,) * 3  # type: ignore


def analyse_image(path: Path, backend: str = "auto") -> dict:
    """One image -> manifest fields: status, reason, landmarks, pose, attributes.

    A face that is not found still gets attributes from the image centre (``_region`` says
    so), so the failure rate can be sliced by skin tone as well as by labels.
    """
    from maskgen.masks.imageio import load_image
    from maskgen.masks.landmarks import detect_faces, resolve_backend, select_faces

    img, reason = load_image(path)
    if img is None:
        return {"status": "failed", "reason": reason}
    row: dict = {"width": int(img.shape[1]), "height": int(img.shape[0])}
    try:
        faces = detect_faces(img, backend=resolve_backend(backend, img.shape))
    except Exception as exc:  # a detector crash on one image must not stop the scan
        faces, row["reason"] = [], f"detector error: {type(exc).__name__}: {exc}"
    if not faces:
        attrs = face_attributes(img, None)
        row.update(status="failed", reason=row.get("reason", getattr(faces, "reason", None) or "no face"))
    else:
        # the most central face is the subject (as in the build); the others are bystanders
        f = select_faces(faces, img.shape[:2], "center")[0]
        lm = np.asarray(f.landmarks, dtype=np.float32).reshape(68, 2)
        attrs = face_attributes(img, lm)
        yaw, pitch, roll = _pose(f)
        row.update(status="ok", landmarks=lm.ravel().tolist(), yaw=yaw, pitch=pitch, roll=roll,
                   det_score=float(getattr(f, "score", np.nan) or np.nan),
                   _faces=len(faces))
    row.update({k: attrs[k] for k in ATTRIBUTE_COLUMNS})
    row["_region"] = attrs["region"]
    return row


def _analyse_many(paths: list[str], backend: str) -> list[dict]:
    return [analyse_image(Path(p), backend) for p in paths]


def _run_parallel(paths: list[Path], workers: int, backend: str) -> list[dict]:
    """Analyse in Ray tasks of a few hundred images each (order kept)."""
    import ray

    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, object_store_memory=RAY_OBJECT_STORE_BYTES)
        started = True
    try:
        task = ray.remote(_analyse_many)
        size = max(16, -(-len(paths) // (workers * 4)))
        chunks = [[str(p) for p in paths[i:i + size]] for i in range(0, len(paths), size)]
        results = ray.get([task.remote(c, backend) for c in chunks])
    finally:
        if started:
            ray.shutdown()
    return [r for chunk in results for r in chunk]


def scan_folder(root: str | os.PathLike, *, workers: int = 1, backend: str = "auto",
                paths: Iterable[Path] | None = None) -> pd.DataFrame:
    """Manifest-shaped table of the images under ``root`` (``identity`` = first sub-folder,
    or the image itself in a flat folder)."""
    root = Path(root)
    files = list(paths) if paths is not None else list_images(root)
    if workers > 1 and len(files) > 64:
        rows = _run_parallel(files, workers, backend)
    else:
        rows = [analyse_image(p, backend) for p in files]
    recs = []
    for p, row in zip(files, rows):
        rel = PurePosixPath(p.relative_to(root).as_posix())
        key = _key(rel)
        identity = rel.parts[0] if len(rel.parts) > 1 else key
        recs.append({"key": key, "identity": identity, "source": "folder", "path": str(rel),
                     **row})
    df = pd.DataFrame.from_records(recs)
    for c in CORE_NAMES:
        if c not in df.columns:
            df[c] = None
    df["label"] = -1
    return df


# ------------------------------------------------------------------ attributes from a manifest
def fill_attributes(df: pd.DataFrame, root: Path | None, only_failed: bool = False) -> int:
    """Compute the attributes a manifest lacks, from its source images (in place); returns
    how many rows got them.

    Rows whose image cannot be read (record files, missing paths) keep nulls.
    """
    from maskgen.masks.imageio import load_image

    wanted = ["failed"] if only_failed else ["ok", "failed"]
    todo = df.index[df["status"].isin(wanted) & df["ita"].isna()
                    & df["path"].notna() & (df["offset"].isna() | (df["offset"] < 0)) & df["member"].isna()]
    if len(todo) == 0:
        return 0
    # rows that already had attributes: measured by whoever wrote the manifest
    region = np.where(df["ita"].notna().to_numpy(), "manifest", None).astype(object)
    done = 0
    cols = {k: df[k].astype("object").to_numpy(copy=True) if k == "skin_tone"
            else pd.to_numeric(df[k], errors="coerce").to_numpy(dtype=np.float64, copy=True)
            for k in ATTRIBUTE_COLUMNS}
    pos = {ix: i for i, ix in enumerate(df.index)}
    for ix in todo:
        p = Path(df.at[ix, "path"])
        if not p.is_absolute() and root is not None:
            p = root / p
        img, _ = load_image(p)
        if img is None:
            continue
        lm = df.at[ix, "landmarks"] if "landmarks" in df.columns else None
        lm = None if lm is None or len(lm) != 136 else np.asarray(lm, np.float32).reshape(68, 2)
        a = face_attributes(img, lm)
        i = pos[ix]
        for k in ATTRIBUTE_COLUMNS:
            cols[k][i] = a[k]
        region[i] = a["region"]
        done += 1
    for k in ATTRIBUTE_COLUMNS:
        df[k] = cols[k]
    df["_region"] = region
    return done


# ------------------------------------------------------------------ labels
def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    p = Path(path)
    if p.suffix == ".parquet":
        lab = pd.read_parquet(p)
    else:
        lab = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
    return lab


def _label_path_column(lab: pd.DataFrame) -> str:
    for c in ("path", "file", "filename", "image", "img"):
        if c in lab.columns:
            return c
    raise ValueError(f"labels have no path column (path/file/filename/image): {list(lab.columns)}")


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
    n_label_rows = int(len(lab))
    df = inp.table
    if join_on == "key":
        if "key" not in lab.columns:
            raise ValueError("labels need a 'key' column to join on key (or use join_on='path')")
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
            raise ValueError("labels need an 'identity' (or 'name') column to join on identity")
        lab_key = lab[col].astype(str)
        target = df["identity"].astype(str)
    else:
        raise ValueError(f"join_on must be 'key', 'path' or 'identity', not {join_on!r}")
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
