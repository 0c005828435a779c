"""Sources: turn a dataset into manifest rows without decoding a single image.

A scan yields one row per image — identity, where its bytes are (file path, ``.rec`` offset or
tar member) and their size — so that a million-image source costs a directory walk, not a
decode. Workers later fetch the bytes of one row with :func:`read_image_bytes`.

Source strings: ``lfw`` (the data home's LFW, downloaded when absent), ``folder:/path`` or a
plain directory, ``recordio:/path/train.rec`` (or a path ending in ``.rec``, or a folder
holding ``train.rec``), ``wds:/path/shards/*.tar`` or a brace pattern ``...-{000000..000009}.tar``.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from braceexpand import braceexpand

from maskgen.datasets import lfw as lfw_mod
from maskgen.datasets.filters import ALREADY_MASKED
from maskgen.datasets.recordio import RecordIOReader, image_bytes_at

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
# Image members of a WebDataset sample, most preferred first: the unmasked original of a
# twins build, then the training image.
WDS_IMAGE_EXTS = ["orig.jpg", "jpg", "jpeg", "png", "webp"]

# Internal (work-table only) columns start with "_" and never reach manifest.parquet.
SCAN_SCHEMA = pa.schema(
    [
        pa.field("identity", pa.string()),
        pa.field("source", pa.string()),
        pa.field("path", pa.string()),
        pa.field("offset", pa.int64()),
        pa.field("member", pa.string()),
        pa.field("nbytes", pa.int64()),
        pa.field("source_label", pa.int64()),
        pa.field("_cache_key", pa.string()),  # source path + place + size + mtime: landmark cache
        pa.field("_drop", pa.string()),  # a reason known at scan time, else null
    ]
)


@dataclass
class Source:
    """A parsed source string: its kind, root and how its identities are named."""

    kind: str  # folder | lfw | recordio | webdataset
    root: Path  # folder, .rec file, or the folder of the tar shards
    patterns: list[str] = field(default_factory=list)  # webdataset: expanded shard paths
    identity_depth: int = 1

    def describe(self) -> str:
        return f"{self.kind}:{self.root}"

    def scan(self) -> pa.Table:
        """One row per image (``SCAN_SCHEMA``), in a deterministic order."""
        rows = {f.name: [] for f in SCAN_SCHEMA}
        scanner = {
            "folder": self._scan_folder,
            "lfw": self._scan_folder,
            "recordio": self._scan_recordio,
            "webdataset": self._scan_wds,
        }[self.kind]
        for row in scanner():
            for k in rows:
                rows[k].append(row.get(k))
        return pa.Table.from_pydict(rows, schema=SCAN_SCHEMA)

    def _scan_folder(self) -> Iterator[dict]:
        root = self.root
        if not root.is_dir():
            raise FileNotFoundError(f"source folder {root} does not exist")
        depth = self.identity_depth
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(root)
            for name in sorted(filenames):
                if Path(name).suffix.lower() not in IMAGE_EXTENSIONS or name.startswith("."):
                    continue
                rel = rel_dir / name
                parts = rel.parts
                if depth == 0:
                    identity = rel.with_suffix("").as_posix()
                elif len(parts) <= depth:
                    continue  # an image above the identity level belongs to nobody
                else:
                    identity = "/".join(parts[:depth])
                full = Path(dirpath) / name
                try:
                    st = full.stat()
                    size, mtime, drop = st.st_size, st.st_mtime_ns, None
                except OSError as exc:
                    size, mtime, drop = None, 0, f"unreadable: {exc.strerror or exc}"
                yield {
                    "identity": identity,
                    "source": self.kind,
                    "path": str(full),
                    "nbytes": size,
                    "_cache_key": f"{full}|{size}|{mtime}",
                    "_drop": drop,
                }

    def _scan_recordio(self) -> Iterator[dict]:
        st = self.root.stat()
        with RecordIOReader(self.root) as reader:
            entries = list(reader.entries())
        width = max((len(str(e.label)) for e in entries), default=1)
        for e in entries:
            yield {
                "identity": f"{e.label:0{width}d}",
                "source": self.kind,
                "path": str(self.root),
                "offset": e.offset,
                "nbytes": e.length,
                "source_label": e.label,
                "_cache_key": f"{self.root}|{e.offset}|{st.st_size}|{st.st_mtime_ns}",
            }

    def _scan_wds(self) -> Iterator[dict]:
        if not self.patterns:
            raise FileNotFoundError(f"no tar shards match {self.root}")
        for shard in self.patterns:
            st = os.stat(shard)
            samples: dict[str, dict[str, tarfile.TarInfo]] = {}
            meta: dict[str, bytes] = {}
            order: list[str] = []
            with tarfile.open(shard, "r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    d, base = os.path.split(m.name)
                    if "." not in base:
                        continue
                    stem, ext = base.split(".", 1)
                    key = f"{d}/{stem}" if d else stem
                    if key not in samples:
                        samples[key] = {}
                        order.append(key)
                    samples[key][ext] = m
                    if ext in ("json", "cls"):
                        meta[f"{key}.{ext}"] = tf.extractfile(m).read()
            for key in order:
                members = samples[key]
                ext = next((e for e in WDS_IMAGE_EXTS if e in members), None)
                info = _wds_meta(meta.get(f"{key}.json"))
                identity = info.get("identity")
                if identity is None and f"{key}.cls" in meta:
                    identity = meta[f"{key}.cls"].decode().strip()
                drop = None
                if ext is None:
                    drop = "no image member in sample"
                elif identity is None:
                    drop = "no identity (.json identity or .cls) in sample"
                elif ext != "orig.jpg" and info.get("masked") is True:
                    drop = ALREADY_MASKED
                m = members.get(ext) if ext else None
                yield {
                    "identity": str(identity) if identity is not None else "",
                    "source": self.kind,
                    "path": shard,
                    "offset": m.offset_data if m else None,
                    "member": f"{key}.{ext}" if ext else key,
                    "nbytes": m.size if m else None,
                    "source_label": int(meta[f"{key}.cls"]) if f"{key}.cls" in meta and _isint(meta[f"{key}.cls"]) else None,
                    "_cache_key": f"{shard}|{key}.{ext}|{st.st_size}|{st.st_mtime_ns}",
                    "_drop": drop,
                }


def _isint(b: bytes) -> bool:
    try:
        int(b)
        return True
    except ValueError:
        return False


def _wds_meta(raw: bytes | None) -> dict:
    if not raw:
        return {}
    try:
        v = json.loads(raw)
        return v if isinstance(v, dict) else {}
    except (ValueError, UnicodeDecodeError):
        return {}


def expand_shards(pattern: str) -> list[str]:
    """Brace patterns and globs -> sorted existing tar paths."""
    out: list[str] = []
    for p in braceexpand(pattern):
        out.extend(glob.glob(os.path.expanduser(p)) if any(c in p for c in "*?[") else [os.path.expanduser(p)])
    missing = [p for p in out if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"tar shard(s) not found: {missing[:3]}")
    return sorted(set(out))


def parse_source(source: str, identity_depth: int = 1, data_home: str | os.PathLike | None = None) -> Source:
    """Resolve a source string (see the module doc) to a :class:`Source`."""
    kind, _, rest = source.partition(":")
    if kind not in ("lfw", "folder", "recordio", "rec", "wds", "webdataset"):
        kind, rest = "", source  # a plain path (which may itself contain a colon)
    if kind == "lfw":
        root = Path(rest).expanduser() if rest else lfw_mod.lfw_dir(data_home)
        return Source("lfw", root.resolve(), identity_depth=1)
    if kind == "folder":
        return Source("folder", Path(rest).expanduser().resolve(), identity_depth=identity_depth)
    if kind in ("recordio", "rec"):
        p = Path(rest).expanduser()
        if p.is_dir():
            p = p / "train.rec"
        if not p.is_file():
            raise FileNotFoundError(f"RecordIO file {p} does not exist")
        return Source("recordio", p.resolve())
    if kind in ("wds", "webdataset"):
        shards = expand_shards(rest)
        return Source("webdataset", Path(os.path.commonpath(shards)) if shards else Path(rest), patterns=shards)
    p = Path(rest).expanduser()
    if rest.endswith(".rec"):
        return parse_source(f"recordio:{rest}", identity_depth, data_home)
    if rest.endswith(".tar") or "{" in rest or "*" in rest:
        return parse_source(f"wds:{rest}", identity_depth, data_home)
    if p.is_dir():
        if (p / "train.rec").is_file():
            return parse_source(f"recordio:{p}", identity_depth, data_home)
        if lfw_mod.is_lfw_dir(p):
            return Source("lfw", p.resolve(), identity_depth=1)
        return Source("folder", p.resolve(), identity_depth=identity_depth)
    raise FileNotFoundError(
        f"source {source!r}: not a folder, .rec, tar pattern, or one of lfw:, folder:, recordio:, wds:"
    )


def read_image_bytes(source: str, path: str, offset: int | None, nbytes: int | None) -> bytes:
    """The encoded image of one manifest row (runs in a worker)."""
    if source == "recordio":
        return image_bytes_at(path, int(offset))
    if source == "webdataset":
        with open(path, "rb") as f:
            f.seek(int(offset))
            data = f.read(int(nbytes))
        if len(data) != nbytes:
            raise OSError(f"tar member truncated ({len(data)} of {nbytes} bytes)")
        return data
    with open(path, "rb") as f:
        return f.read()


def relative_path(src: Source, path: str, member: str | None, offset: int | None) -> str:
    """A machine-independent name of the image inside its source (for sample metadata)."""
    if src.kind == "recordio":
        return f"{src.root.name}@{offset}"
    if src.kind == "webdataset":
        return f"{os.path.relpath(path, src.root)}:{member}"
    return os.path.relpath(path, src.root)
